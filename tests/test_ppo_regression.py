"""PPO's behaviour is pinned: two short seeded runs give the metrics the trainer gave before its loop
moved into ``llmac/rl/`` (issue 13). ``BASELINE`` holds the figures measured on the code before that
refactor; a change to sampling, scoring, the losses or the update order moves them past float noise."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llmac.config import ModelConfig
from llmac.data.tasks import TaskConfig
from llmac.engines import EngineConfig
from llmac.metrics_log import MetricsLog
from llmac.ppo.config import PPOConfig
from llmac.ppo.trainer import run_ppo

COMMON = dict(num_iterations=2, prompts_per_iteration=8, samples_per_prompt=4, max_new_tokens=40,
              mini_batch_size=16, micro_batch_size=5, learning_rate=1e-4, value_learning_rate=1e-3,
              warmup_steps=1, checkpoint_every=0, eval_every=2, eval_samples=2, progress=False, seed=7,
              reward="ppo_rewards:short")  # fmt: skip
RUNS = {
    # Critic-free: group advantages, KL in the loss, entropy bonus, overlong shaping, dynamic sampling.
    "grpo": dict(
        advantage_estimator="grpo",
        kl_coef=0.05,
        kl_in="loss",
        kl_estimator="k3",
        entropy_coef=0.01,
        overlong_buffer=8,
        dynamic_sampling=True,
        ppo_epochs=2,
        lr_scheduler_type="cosine",
    ),  # fmt: skip
    # Step critic: value model from the actor, KL in the reward, a process reward model, value warm-up.
    "step_gae": dict(
        advantage_estimator="step_gae",
        kl_coef=0.05,
        kl_in="reward",
        process_reward_model="PRM",
        process_reward_coef=0.5,
        value_warmup_iterations=1,
        clip_high=0.28,
    ),  # fmt: skip
}
TIMING = ("_seconds", "tokens_per_s")
# Metrics the trainer reports since the baseline was measured; the baseline's own keys must not change.
ADDED_SINCE_BASELINE = {"eval_direct_answer_share", "eval_sampled_direct_answer_share"}


def run_regression(actor: Path, out: Path, name: str) -> list[dict]:
    """Run ``RUNS[name]`` from ``actor`` into ``out``; returns its metrics rows."""
    options = dict(RUNS[name])
    if options.get("process_reward_model") == "PRM":
        from llmac.critic.model import init_critic

        init_critic(actor).save_pretrained(out / "prm")
        AutoTokenizer.from_pretrained(actor).save_pretrained(out / "prm")
        options["process_reward_model"] = str(out / "prm")
    config = PPOConfig(output_dir=str(out / "run"), **COMMON, **options)
    run_ppo(ModelConfig(model_name_or_path=str(actor)), TaskConfig(num_train=256, num_eval=16),
            EngineConfig(engine="hf", engine_dtype="float32"), config)  # fmt: skip
    return MetricsLog(out / "run").read()


# Measured on the pre-refactor trainer (git 99dbcbf), 2026-11-30; timing keys left out.
BASELINE: dict[str, list[dict]] = {
    "grpo": [
        {"iteration": 0, "completions": 0, "eval_accuracy": 0.0, "eval_sampled_accuracy": 0.03125},
        {
            "iteration": 1,
            "completions": 128,
            "reward": 0.046875,
            "accuracy": 0.046875,
            "response_length": 37.484375,
            "truncated_fraction": 0.671875,
            "filtered_groups": 26,
            "unused_groups": 0,
            "skipped_long_prompts": 0,
            "policy_loss": 0.23673054,
            "clip_fraction": 0.028922907,
            "approx_kl": 0.012832596,
            "ratio": 0.99954195,
            "entropy": 1.0249365,
            "learning_rate": 9.4055733e-05,
            "engine_logprob_gap": 3.1152567e-07,
            "engine_logprob_gap_max": 3.3378601e-06,
            "kl": 0.0,
            "skipped_iteration": 0,
        },
        {
            "iteration": 2,
            "completions": 256,
            "reward": 0.0625,
            "accuracy": 0.0625,
            "response_length": 36.195312,
            "truncated_fraction": 0.4609375,
            "filtered_groups": 25,
            "unused_groups": 0,
            "skipped_long_prompts": 0,
            "policy_loss": 0.22964233,
            "clip_fraction": 0.003475534,
            "approx_kl": 0.00050622414,
            "ratio": 1.000161,
            "entropy": 0.94763458,
            "learning_rate": 3.0944267e-05,
            "engine_logprob_gap": 3.0263999e-07,
            "engine_logprob_gap_max": 5.4240227e-06,
            "kl": 0.010529278,
            "skipped_iteration": 0,
            "eval_accuracy": 0.0,
            "eval_sampled_accuracy": 0.0625,
        },
    ],
    "step_gae": [
        {"iteration": 0, "completions": 0, "eval_accuracy": 0.0, "eval_sampled_accuracy": 0.03125},
        {
            "iteration": 1,
            "completions": 32,
            "reward": 0.0625,
            "accuracy": 0.0625,
            "response_length": 37.5,
            "truncated_fraction": 0.71875,
            "filtered_groups": 0,
            "unused_groups": 0,
            "skipped_long_prompts": 0,
            "policy_loss": 0.00064166356,
            "clip_fraction": 0.0,
            "approx_kl": 0.0,
            "ratio": 1.0,
            "entropy": 1.1221587,
            "value_loss": 0.0445916,
            "value_clip_fraction": 0.0,
            "value_error": 0.0891832,
            "learning_rate": 0.0001,
            "engine_logprob_gap": 3.2107269e-07,
            "engine_logprob_gap_max": 1.0728836e-05,
            "kl": 0.0,
            "explained_variance": 0.0,
            "value_mean": 0.5,
            "skipped_iteration": 0,
        },
        {
            "iteration": 2,
            "completions": 64,
            "reward": 0.03125,
            "accuracy": 0.03125,
            "response_length": 38.125,
            "truncated_fraction": 0.8125,
            "filtered_groups": 0,
            "unused_groups": 0,
            "skipped_long_prompts": 0,
            "policy_loss": -0.0031046048,
            "clip_fraction": 0.0032051282,
            "approx_kl": 0.00067439128,
            "ratio": 0.99905708,
            "entropy": 1.1928278,
            "value_loss": 0.032966743,
            "value_clip_fraction": 0.0,
            "value_error": 0.065933486,
            "learning_rate": 0.0001,
            "engine_logprob_gap": 3.2929924e-07,
            "engine_logprob_gap_max": 7.6293945e-06,
            "kl": 0.0,
            "explained_variance": 0.13097554,
            "value_mean": 0.51982975,
            "skipped_iteration": 0,
            "eval_accuracy": 0.0,
            "eval_sampled_accuracy": 0.03125,
        },
    ],
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_ppo_metrics_match_the_pre_refactor_trainer(tiny_actor_dir, tmp_path, name):
    rows = run_regression(tiny_actor_dir, tmp_path, name)
    expected = BASELINE[name]
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in expected]
    for row, want in zip(rows, expected, strict=True):
        measured = {k: v for k, v in row.items() if not k.endswith(TIMING) and k not in ADDED_SINCE_BASELINE}
        assert set(measured) == set(want), (name, row["iteration"], set(measured) ^ set(want))
        for key, value in want.items():
            tolerance = 1e-4 if key.startswith("engine_logprob_gap") else 1e-5  # float noise itself
            assert measured[key] == pytest.approx(value, rel=1e-4, abs=tolerance), (
                name,
                row["iteration"],
                key,
            )
