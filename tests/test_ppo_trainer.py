"""The PPO trainer on one process: it learns, it resumes exactly after a kill, its engine runs the
trainer's weights, and bad input fails loudly (or is counted) instead of reaching the weights."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmac.config import ModelConfig
from llmac.data.tasks import TaskConfig
from llmac.engines import EngineConfig
from llmac.losses import entropy_from_logits
from llmac.metrics_log import MetricsLog
from llmac.ppo.config import PPOConfig
from llmac.ppo.trainer import PPOTrainer
from llmac.rl.forward import completion_logits
from llmac.rl.sampler import PromptOrder

TESTS = Path(__file__).resolve().parent
TASK = {"num_train": 256, "num_eval": 16}


def _config(tmp_path: Path, **overrides) -> PPOConfig:
    fields = dict(output_dir=str(tmp_path / "run"), num_iterations=2, prompts_per_iteration=8, samples_per_prompt=4,
                  max_new_tokens=40, mini_batch_size=16, learning_rate=1e-4, value_learning_rate=1e-3,
                  checkpoint_every=0, eval_every=0, progress=False, seed=3)  # fmt: skip
    fields.update(overrides)
    return PPOConfig(**fields)


def _trainer(actor: Path, tmp_path: Path, lora: bool = False, **overrides) -> PPOTrainer:
    return PPOTrainer(ModelConfig(model_name_or_path=str(actor), use_lora=lora, lora_r=8),
                      TaskConfig(**TASK), EngineConfig(engine="hf", engine_dtype="float32"),
                      _config(tmp_path, **overrides))  # fmt: skip


def test_prompt_order_is_a_new_permutation_every_epoch():
    order = PromptOrder(5, seed=1)
    first, second = order.take(5), order.take(5)
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    resumed = PromptOrder(5, seed=1, cursor=3)
    assert resumed.take(4) == first[3:] + second[:2]


def test_ppo_learns_a_reward_and_its_engine_runs_the_trainers_weights(tiny_actor_dir, tmp_path):
    trainer = _trainer(tiny_actor_dir, tmp_path, reward="ppo_rewards:short", num_iterations=12, warmup_steps=1,
                       advantage_estimator="step_gae", prompts_per_iteration=16, eval_every=0)  # fmt: skip
    trainer.train()
    rows = MetricsLog(tmp_path / "run").read()
    rewards = [r["reward"] for r in rows]
    assert len(rows) == 12 and sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.2, rewards
    # Every iteration's rollouts came from the weights of the update before (synced into the engine).
    assert max(r["engine_logprob_gap_max"] for r in rows) < 1e-3
    assert all(r["clip_fraction"] < 0.5 and math.isfinite(r["value_loss"]) for r in rows)
    actor = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "actor")
    assert set(load_file(tmp_path / "run" / "actor" / "model.safetensors")) == set(actor.state_dict())
    assert (tmp_path / "run" / "critic" / "config.json").is_file()


def test_lora_run_syncs_merged_weights_and_saves_and_pushes_a_plain_model(
    tiny_actor_dir, tmp_path, monkeypatch
):
    import huggingface_hub
    from recording_hub import RecordingHfApi

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    trainer = _trainer(tiny_actor_dir, tmp_path, lora=True, advantage_estimator="grpo", kl_coef=0.05, kl_in="loss", reward="ppo_rewards:short",
                       kl_estimator="k3", learning_rate=1e-3, hub_model_id="me/tiny-ppo")  # fmt: skip
    trainer.train()
    pushed = RecordingHfApi.calls[-1][1]
    assert pushed["repo_id"] == "me/tiny-ppo" and {"README.md", "model.safetensors"} <= set(pushed["files"])
    rows = MetricsLog(tmp_path / "run").read()
    assert rows[1]["engine_logprob_gap_max"] < 1e-3 and rows[1]["kl"] > 0  # the update moved the policy
    saved = load_file(tmp_path / "run" / "actor" / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in saved)
    base = load_file(tiny_actor_dir / "model.safetensors")
    assert set(saved) == set(base)
    assert any(not torch.equal(saved[k], base[k]) for k in base), "the LoRA update was not merged"


def test_forward_passes_by_length_group_give_the_padded_batchs_outputs(tiny_actor_dir, tmp_path):
    from llmac.rl.batch import build_token_batch

    trainer = _trainer(tiny_actor_dir, tmp_path, advantage_estimator="step_gae", micro_batch_size=3)
    groups, _ = trainer.sampler.rollouts(1)
    samples, _ = trainer.my_share(groups)
    batch = build_token_batch(samples, [s.reward for s in samples], trainer.tokenizer.pad_token_id)
    lengths = batch.attention_mask.sum(1)
    assert lengths.min() < lengths.max() and len(batch) % 3  # padding to cut, a short last group
    with torch.no_grad():
        grouped = trainer.forward.outputs(trainer.model, batch, with_value=True, entropy_grad=False)
        model = trainer.accelerator.unwrap_model(trainer.model)
        policy_logits = model.policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        value_logits = model.value(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    trainer.close()
    tokens, positions = batch.completion_mask, batch.attention_mask.bool()
    torch.testing.assert_close(
        grouped.logprobs[tokens], trainer.forward.logprobs(policy_logits, batch)[tokens]
    )
    entropy = entropy_from_logits(completion_logits(policy_logits, batch))
    torch.testing.assert_close(grouped.entropy[tokens], entropy[tokens])
    torch.testing.assert_close(
        grouped.values[positions], trainer.forward.values(value_logits.squeeze(-1))[positions]
    )


RECIPE = TESTS.parent / "recipes" / "ppo" / "tiny_arithmetic.yaml"


def _command(actor: Path, out: Path, async_rollouts: bool = False, recipe: bool = False) -> list[str]:
    # The recipe's own path: vLLM in float32, the PPO ratio started from the engine's log-probs.
    engine = ["--config", str(RECIPE), "--kv_cache_gib", "0.25"]
    if not recipe:
        engine = ["--engine", "hf", "--engine_dtype", "float32"]
    return [
        sys.executable, "-m", "llmac", "ppo", *engine, "--model_name_or_path", str(actor), "--num_train", "256",
        "--num_eval", "16", "--output_dir", str(out),
        "--num_iterations", "4", "--checkpoint_every", "2", "--eval_every", "0", "--prompts_per_iteration", "8",
        "--samples_per_prompt", "4", "--max_new_tokens", "40", "--mini_batch_size", "16", "--ppo_epochs", "2",
        "--learning_rate", "1e-4", "--seed", "5", "--progress", "false", "--reward", "ppo_rewards:short",
        "--async_rollouts", str(async_rollouts).lower(), "--lr_scheduler_type", "cosine", "--warmup_steps", "2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "async_rollouts, recipe",
    [(False, False), (True, False), pytest.param(False, True, marks=pytest.mark.vllm)],
    ids=["sync", "async", "recipe_vllm_engine_logprobs"],
)
def test_a_killed_run_resumes_to_the_uninterrupted_runs_metrics(
    tiny_actor_dir, tmp_path, async_rollouts, recipe
):
    env = {**os.environ, "PYTHONPATH": str(TESTS), "VLLM_LOGGING_LEVEL": "WARNING"}
    command = lambda out: _command(tiny_actor_dir, out, async_rollouts, recipe)  # noqa: E731
    subprocess.run(command(tmp_path / "whole"), env=env, check=True, capture_output=True)

    out = tmp_path / "killed"
    job = subprocess.Popen(command(out), env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while (
        not (out / "checkpoints" / "iter-000002").is_dir()
        and job.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert job.poll() is None, job.stderr.read().decode()[-2000:]
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (out / "actor").exists()
    subprocess.run(command(out), env=env, check=True, capture_output=True)

    whole, resumed = MetricsLog(tmp_path / "whole").read(), MetricsLog(out).read()
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    # 2 epochs x 2 minibatches of 16 = 4 steps an iteration, 16 in all; 2 warm-up steps, then cosine.
    factor = [(s + 1) / 2 if s < 2 else 0.5 * (1 + math.cos(math.pi * (s - 2) / 14)) for s in range(16)]
    expected = [1e-4 * sum(factor[4 * i : 4 * i + 4]) / 4 for i in range(4)]
    assert [r["learning_rate"] for r in whole] == pytest.approx(expected, rel=1e-6)
    for key, value in whole[3].items():
        if key.endswith(("tokens_per_s", "_seconds")):
            continue
        assert resumed[3][key] == pytest.approx(value, abs=1e-5), key
    a = load_file(tmp_path / "whole" / "actor" / "model.safetensors")
    b = load_file(out / "actor" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    if recipe:  # the ratio started from vLLM's log-probs, checked on each iteration's first minibatch
        assert all(r["engine_logprob_gap_max"] < 5e-5 for r in whole + resumed), whole + resumed


def test_async_rollouts_are_sampled_one_update_behind(tiny_actor_dir, tmp_path):
    trainer = _trainer(tiny_actor_dir, tmp_path, async_rollouts=True, num_iterations=3, learning_rate=1e-3,
                       advantage_estimator="grpo", reward="ppo_rewards:short")  # fmt: skip
    sampled = {}
    sample_batch = trainer.sampler.sample_batch

    def recording(number, cursor, completions):
        result = sample_batch(number, cursor, completions)
        sampled[number] = (cursor, completions, result[0])
        return result

    trainer.sampler.sample_batch = recording
    trainer.train()
    rows = MetricsLog(tmp_path / "run").read()
    assert sorted(sampled) == [1, 2, 3]
    # Batch 2 was sampled while iteration 1 updated, so from the initial weights: a fresh trainer
    # (initial weights, synchronous) samples exactly the same completions for it.
    fresh = _trainer(tiny_actor_dir, tmp_path / "fresh", num_iterations=3, learning_rate=1e-3,
                     advantage_estimator="grpo", reward="ppo_rewards:short")  # fmt: skip
    cursor, completions, groups = sampled[2]
    again = fresh.sampler.sample_batch(2, cursor, completions)[0]
    tokens = lambda gs: [s.token_ids for g in gs for s in g]  # noqa: E731
    assert tokens(again) == tokens(groups)
    fresh.close()
    # ... and the trainer scored them with weights one update newer than the ones that sampled them.
    assert rows[1]["engine_logprob_gap"] > 100 * rows[0]["engine_logprob_gap"] + 1e-4
    assert (
        rows[0]["sampler_wait_seconds"] >= 0 and rows[2]["sampler_wait_seconds"] == 0
    )  # none after the last


@pytest.mark.parametrize("estimator", ["step_gae", "grpo"])
def test_engine_old_logprobs_give_the_trainers_first_update(tiny_actor_dir, tmp_path, estimator):
    """The engine ran the trainer's weights, so starting the ratio from its log-probs changes nothing
    but the forward pass it saves."""
    runs = {}
    for source in ("trainer", "engine"):
        _trainer(tiny_actor_dir, tmp_path / source, num_iterations=1, old_logprobs=source,
                 advantage_estimator=estimator, ppo_epochs=2).train()  # fmt: skip
        runs[source] = MetricsLog(tmp_path / source / "run").read()[0]
    assert runs["trainer"]["engine_logprob_gap_max"] < 1e-4  # what makes the two the same
    assert runs["engine"]["engine_logprob_gap_max"] < 1e-4  # checked on the first minibatch instead
    for key in ("policy_loss", "clip_fraction", "approx_kl", "entropy", "value_loss"):
        if key in runs["trainer"]:
            assert runs["engine"][key] == pytest.approx(runs["trainer"][key], abs=1e-4), key


def test_reward_function_errors_are_reported(tiny_actor_dir, tmp_path):
    with pytest.raises(RuntimeError, match=r"reward function 'ppo_rewards:raises' raised .*answer table"):
        _trainer(tiny_actor_dir, tmp_path, reward="ppo_rewards:raises").train()
    with pytest.raises(ValueError, match=r"'ppo_rewards:nan_for_third' returned nan for completion 2"):
        _trainer(tiny_actor_dir, tmp_path / "nan", reward="ppo_rewards:nan_for_third").train()


def test_an_all_filtered_batch_is_a_counted_skip(tiny_actor_dir, tmp_path):
    trainer = _trainer(tiny_actor_dir, tmp_path, reward="ppo_rewards:always_one", advantage_estimator="grpo",
                       dynamic_sampling=True, max_sampling_rounds=2)  # fmt: skip
    before = {k: v.clone() for k, v in trainer.policy_weights().items()}
    trainer.train()
    rows = MetricsLog(tmp_path / "run").read()
    assert [r["skipped_iteration"] for r in rows] == [1, 1]
    assert [r["filtered_groups"] for r in rows] == [16, 16]  # 2 rounds of 8 prompts, all equal rewards
    assert [r["unused_groups"] for r in rows] == [0, 0]
    assert rows[-1]["completions"] == 2 * 2 * 8 * 4
    after = trainer.policy_weights()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_long_prompts_are_skipped_and_counted(tiny_actor_dir, tmp_path):
    with pytest.raises(ValueError, match="every prompt is longer than max_prompt_length=4"):
        _trainer(tiny_actor_dir, tmp_path, max_prompt_length=4)
    lengths = sorted(len(p) for p in _trainer(tiny_actor_dir, tmp_path).sampler.train.ids)
    cap = lengths[len(lengths) // 2]
    trainer = _trainer(tiny_actor_dir, tmp_path, max_prompt_length=cap)
    assert trainer.sampler.train.skipped == sum(n > cap for n in lengths) > 0
    assert max(len(p) for p in trainer.sampler.train.ids) <= cap


def test_bad_settings_are_refused(tiny_actor_dir, tmp_path):
    with pytest.raises(ValueError, match="PPOConfig.advantage_estimator = 'vtrace': must be one of"):
        _config(tmp_path, advantage_estimator="vtrace")
    with pytest.raises(ValueError, match="grpo needs samples_per_prompt >= 2"):
        _config(tmp_path, advantage_estimator="grpo", samples_per_prompt=1)
    with pytest.raises(ValueError, match="kl_in='loss'"):
        _trainer(tiny_actor_dir, tmp_path, advantage_estimator="rloo", kl_coef=0.1, kl_in="reward")
    with pytest.raises(ValueError, match="must be a saved actor folder"):
        _trainer(tmp_path / "nowhere", tmp_path)
    with pytest.raises(ValueError, match="old_logprobs='engine' needs temperature 1.0"):
        _config(tmp_path, old_logprobs="engine", temperature=0.7)
    assert json.loads(json.dumps(_config(tmp_path).__dict__))["clip_high"] == 0.2


@pytest.mark.parametrize(
    "options",
    [
        {"advantage_estimator": "token_gae", "overlong_buffer": 8, "entropy_coef": 0.01, "kl_coef": 0.05},
        {"advantage_estimator": "rloo", "loss_aggregation": "sequence", "kl_coef": 0.05, "kl_in": "loss"},
        {"advantage_estimator": "lite_ppo", "dynamic_sampling": True},
        {"advantage_estimator": "step_gae", "process_reward_model": "CRITIC", "value_clip": 0.0},
    ],
    ids=["token_gae", "rloo", "lite_ppo", "process_reward"],
)
def test_every_estimator_and_switch_runs_end_to_end(tiny_actor_dir, tmp_path, options):
    if options.get("process_reward_model") == "CRITIC":
        from llmac.critic.model import init_critic

        init_critic(tiny_actor_dir).save_pretrained(tmp_path / "critic")
        AutoTokenizer.from_pretrained(tiny_actor_dir).save_pretrained(tmp_path / "critic")
        options = {**options, "process_reward_model": str(tmp_path / "critic")}
    trainer = _trainer(tiny_actor_dir, tmp_path, reward="ppo_rewards:short", **options)
    trainer.train()
    rows = MetricsLog(tmp_path / "run").read()
    assert len(rows) == 2
    for row in rows:
        assert all(v is None or math.isfinite(v) for v in row.values() if isinstance(v, float)), row
        if not row["skipped_iteration"]:
            assert row["engine_logprob_gap_max"] < 1e-3
    assert all(torch.isfinite(w).all() for w in trainer.policy_weights().values())
