"""2-process PPO under `accelerate launch` (gloo on CPU): ZeRO-2, ZeRO-3 and one process take the same
updates, the vLLM engine on the main process samples from the weights the trainer just updated, and
async rollouts run one update behind. The actor ties its embeddings and head (as SmolLM2 and Qwen2.5),
so each sync must reach the head too: a stale one puts the engine tens of nats off."""

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
CLAIMED_GAP = 5e-5  # the README: vLLM's float32 log-probs match the trainer's to 2e-5 at most

# Plain SGD (an update is the rate times the gradient, so a gradient twice too large moves the weights
# twice as far; Adam would normalise it away), no clipping (it would cap such a gradient), and one
# optimizer step an iteration over the whole batch with sequence-level means: 2 processes averaging
# their 16 completions' mean take the step one process takes on all 32.
SGD = ("--optimizer", "sgd", "--learning_rate", "0.5", "--value_learning_rate", "0.5", "--max_grad_norm", "0",
       "--loss_aggregation", "sequence", "--warmup_steps", "0", "--lr_scheduler_type", "constant")  # fmt: skip


def _command(actor: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m", "llmac", "ppo", "--config", "recipes/ppo/tiny_arithmetic.yaml", "--model_name_or_path", str(actor),
        "--output_dir", str(out), "--num_train", "256", "--num_eval", "16", "--num_iterations", "2",
        "--prompts_per_iteration", "8", "--samples_per_prompt", "4", "--max_new_tokens", "40",
        "--checkpoint_every", "0", "--eval_every", "0", "--progress", "false", "--kv_cache_gib", "0.25",
        "--seed", "11", *extra,
    ]  # fmt: skip


def _run(cmd: list[str], out: Path) -> list[dict]:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return MetricsLog(out).read()


def _launch(zero: str, actor: Path, out: Path, *extra: str) -> list[dict]:
    """2 processes, each with half of every batch: a minibatch of 16 is its whole share."""
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch", "--config_file", f"recipes/accelerate/{zero}_cpu.yaml"]
    return _run([*launcher, *_command(actor, out, "--mini_batch_size", "16", *extra)], out)


def _one_process(actor: Path, out: Path, *extra: str) -> list[dict]:
    return _run([sys.executable, *_command(actor, out, "--mini_batch_size", "32", *extra)], out)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    """The saved actor's tensors; the tied actor's head, when saved too, must equal its embedding."""
    weights = load_file(run / "actor" / "model.safetensors")
    if "lm_head.weight" in weights:
        assert torch.equal(weights.pop("lm_head.weight"), weights["model.embed_tokens.weight"])
    return weights


def _max_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def tied_actor_dir(tmp_path_factory, arithmetic_rows) -> Path:
    """The tiny actor with tied embeddings, warm-started like ``tiny_actor_dir``; saved without a head."""
    from llmac.models import TinyModelConfig, warm_tiny_actor

    out = tmp_path_factory.mktemp("tied_actor")
    config = TinyModelConfig(seed=0, tie_word_embeddings=True)
    actor = warm_tiny_actor(
        arithmetic_rows["question"], arithmetic_rows["solution"], out, steps=80, config=config
    )
    assert "lm_head.weight" not in load_file(actor / "model.safetensors")
    return actor


@pytest.fixture(scope="module")
def zero2_run(tied_actor_dir, tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ppo_zero2") / "run"
    return out, _launch("zero2", tied_actor_dir, out, *SGD)


@pytest.mark.distributed
@pytest.mark.vllm
def test_zero2_zero3_and_one_process_take_the_same_sgd_updates(tied_actor_dir, tmp_path, zero2_run):
    single = _one_process(tied_actor_dir, tmp_path / "single", *SGD)
    zero2_dir, zero2 = zero2_run
    initial, reference = load_file(tied_actor_dir / "model.safetensors"), _weights(tmp_path / "single")
    moved = _max_gap(reference, initial)
    # The 2-process run against one process on the whole batch: a gradient summed over the processes
    # instead of averaged moves each weight twice as far, a gap as large as the move itself.
    assert moved > 1e-2, moved
    assert _max_gap(_weights(zero2_dir), reference) < 1e-2 * moved

    zero3 = _launch("zero3", tied_actor_dir, tmp_path / "zero3", *SGD)
    assert _max_gap(_weights(tmp_path / "zero3"), reference) < 1e-2 * moved
    assert (
        [r["iteration"] for r in single] == [r["iteration"] for r in zero2] == [r["iteration"] for r in zero3]
    )
    # Iteration 1: the same rollouts (one engine, same seeds) and the same losses in all three runs.
    for run in (zero2, zero3):
        assert (run[0]["reward"], run[0]["response_length"]) == (
            single[0]["reward"],
            single[0]["response_length"],
        )
        for key in ("policy_loss", "value_loss", "approx_kl", "clip_fraction", "explained_variance"):
            assert run[0][key] == pytest.approx(single[0][key], abs=1e-5), key
    # Iteration 2's rollouts were sampled after the weight sync: the engine's log-probs of its own
    # tokens equal the updated trainer's (gathered from ZeRO-3 shards in the last run), tied head included. The recipe
    # starts the PPO ratio from those log-probs, so the gap is read on each first minibatch.
    for run in (single, zero2, zero3):
        assert run[1]["engine_logprob_gap_max"] < CLAIMED_GAP, run[1]


@pytest.mark.distributed
@pytest.mark.vllm
def test_async_rollouts_under_zero2_are_one_update_behind(tied_actor_dir, tmp_path, zero2_run):
    # The main process samples iteration 2 while both processes update, so iteration 1 is the
    # synchronous run's and iteration 2 is scored one update after it was sampled.
    _, zero2 = zero2_run
    ahead = _launch("zero2", tied_actor_dir, tmp_path / "async", *SGD, "--async_rollouts", "true")
    assert [r["iteration"] for r in ahead] == [1, 2]
    for key in ("reward", "response_length", "policy_loss", "value_loss", "approx_kl"):
        assert ahead[0][key] == pytest.approx(zero2[0][key], abs=1e-6), key
    assert ahead[1]["engine_logprob_gap"] > 100 * zero2[1]["engine_logprob_gap"] + 1e-4
    assert ahead[1]["sampler_wait_seconds"] == 0  # nothing sampled after the last iteration


@pytest.mark.distributed
@pytest.mark.vllm
def test_zero3_lora_ppo_syncs_merged_weights(tied_actor_dir, tmp_path):
    # The recipe starts the PPO ratio from the engine's log-probs; this run recomputes them instead.
    # The actor is tied; LoRA on its embedding cannot run under ZeRO-3 (llmac.ppo.models says why).
    rows = _launch("zero3", tied_actor_dir, tmp_path / "lora", "--use_lora", "true", "--lora_r", "8",
                   "--learning_rate", "1e-3", "--old_logprobs", "trainer", "--warmup_steps", "1",
                   "--mini_batch_size", "8")  # two minibatches: the second one's ratio has moved  # fmt: skip
    assert rows[1]["engine_logprob_gap_max"] < CLAIMED_GAP and rows[0]["approx_kl"] > 0, rows
    saved = _weights(tmp_path / "lora")  # merged, plain weights (the tied head checked, then dropped)
    base = load_file(tied_actor_dir / "model.safetensors")
    assert set(saved) == set(base) and any(not torch.equal(saved[k], base[k]) for k in base)
