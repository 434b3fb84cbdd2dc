"""2-process PPO under `accelerate launch` (gloo on CPU): ZeRO-2 and ZeRO-3 agree, the vLLM engine on
the main process samples from the weights the trainer just updated, and async rollouts run one update
behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmac.metrics_log import MetricsLog

REPO = Path(__file__).resolve().parents[1]


def _launch(zero: str, actor: Path, out: Path, *extra: str) -> list[dict]:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate), "launch", "--config_file", f"recipes/accelerate/{zero}_cpu.yaml", "-m", "llmac", "ppo",
        "--config", "recipes/ppo/tiny_arithmetic.yaml", "--model_name_or_path", str(actor), "--output_dir", str(out),
        "--num_train", "256", "--num_eval", "16", "--num_iterations", "2", "--prompts_per_iteration", "8",
        "--samples_per_prompt", "4", "--max_new_tokens", "40", "--mini_batch_size", "8", "--learning_rate", "1e-4",
        "--warmup_steps", "1", "--checkpoint_every", "0", "--eval_every", "0", "--progress", "false",
        "--kv_cache_gib", "0.25", "--seed", "11", *extra,
    ]  # fmt: skip
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return MetricsLog(out).read()


@pytest.mark.distributed
@pytest.mark.vllm
def test_zero2_and_zero3_ppo_agree_and_sync_the_engine(tiny_actor_dir, tmp_path):
    pytest.importorskip("vllm")
    zero2 = _launch("zero2", tiny_actor_dir, tmp_path / "zero2")
    zero3 = _launch("zero3", tiny_actor_dir, tmp_path / "zero3")
    assert [r["iteration"] for r in zero2] == [r["iteration"] for r in zero3] == [1, 2]
    # Iteration 1: the same rollouts (one engine, same seeds) and the same losses under both stages.
    first2, first3 = zero2[0], zero3[0]
    assert first2["reward"] == first3["reward"] and first2["response_length"] == first3["response_length"]
    for key in ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "explained_variance"):
        assert first3[key] == pytest.approx(first2[key], abs=1e-5), key
    # Iteration 2's rollouts were sampled after the weight sync: the engine's log-probs of its own
    # tokens equal the updated trainer's (gathered from ZeRO-3 shards in the second run). The recipe
    # starts the PPO ratio from those log-probs, so the gap is read on each first minibatch.
    for run in (zero2, zero3):
        assert run[1]["engine_logprob_gap_max"] < 1e-3, run[1]
        assert run[1]["approx_kl"] > 0 or run[0]["approx_kl"] > 0  # the weights did move
    a = load_file(tmp_path / "zero2" / "actor" / "model.safetensors")
    b = load_file(tmp_path / "zero3" / "actor" / "model.safetensors")
    assert set(a) == set(b) and all((a[k] - b[k]).abs().max() < 1e-4 for k in a)

    # async_rollouts under ZeRO-2: the main process samples iteration 2 while both processes update, so
    # iteration 1 is the synchronous run's and iteration 2 is scored one update after it was sampled.
    ahead = _launch("zero2", tiny_actor_dir, tmp_path / "async", "--async_rollouts", "true")
    assert [r["iteration"] for r in ahead] == [1, 2]
    for key in ("reward", "response_length", "policy_loss", "value_loss", "approx_kl"):
        assert ahead[0][key] == pytest.approx(first2[key], abs=1e-6), key
    assert ahead[1]["engine_logprob_gap"] > 100 * zero2[1]["engine_logprob_gap"] + 1e-4
    assert ahead[1]["sampler_wait_seconds"] == 0  # nothing sampled after the last iteration


@pytest.mark.distributed
@pytest.mark.vllm
def test_zero3_lora_ppo_syncs_merged_weights(tiny_actor_dir, tmp_path):
    pytest.importorskip("vllm")
    # The recipe starts the PPO ratio from the engine's log-probs; this run recomputes them instead.
    rows = _launch("zero3", tiny_actor_dir, tmp_path / "lora", "--use_lora", "true", "--lora_r", "8",
                   "--learning_rate", "1e-3", "--old_logprobs", "trainer")  # fmt: skip
    assert rows[1]["engine_logprob_gap_max"] < 1e-3 and rows[0]["approx_kl"] > 0, rows
    saved = load_file(tmp_path / "lora" / "actor" / "model.safetensors")
    base = load_file(tiny_actor_dir / "model.safetensors")
    assert set(saved) == set(base) and any(not torch.equal(saved[k], base[k]) for k in base)
