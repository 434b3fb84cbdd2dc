"""The README's main job, shrunk: the whole spine runs end to end and a rerun reuses every stage."""

from __future__ import annotations

import json

import pytest

from llmac import demo
from llmac.metrics_log import MetricsLog

PPO_RECIPE = """
num_iterations: 2
prompts_per_iteration: 8
samples_per_prompt: 4
max_new_tokens: 48
mini_batch_size: 16
learning_rate: 1.0e-5
eval_every: 1
eval_samples: 0
checkpoint_every: 0
report_to: none
progress: false
"""


def _argv(tmp_path) -> list[str]:
    recipe = tmp_path / "ppo.yaml"
    recipe.write_text(PPO_RECIPE)
    return [
        "--run_dir", str(tmp_path / "demo"), "--task", "arithmetic", "--num_train", "2000", "--num_eval", "16",
        "--max_steps", "100", "--per_device_train_batch_size", "32", "--learning_rate", "1e-3",
        "--warmup_steps", "10", "--logging_steps", "50", "--save_steps", "100", "--report_to", "none",
        "--bf16", "false", "--max_length", "128", "--seed", "0",
        "--engine", "vllm", "--engine_dtype", "float32", "--eval_samples", "2", "--eval_max_new_tokens", "48",
        "--critic_questions", "8", "--critic_solutions", "2", "--mc_rollouts", "2", "--held_out_labelled", "16",
        "--critic_max_steps", "5", "--critic_batch_size", "8", "--ppo_recipe", str(recipe),
    ]  # fmt: skip


@pytest.mark.vllm
def test_demo_runs_the_whole_spine_and_a_rerun_reuses_every_stage(tmp_path):
    results = demo.main(_argv(tmp_path))
    run = tmp_path / "demo"
    as_json = lambda value: json.dumps(value, sort_keys=True)  # noqa: E731 - NaN (a weak actor's undefined metric) equals itself
    assert as_json(json.loads((run / "demo_results.json").read_text())) == as_json(results)
    assert results["engine"] == "VLLMEngine" and results["held_out_problems"] == 16
    assert 0 <= results["sft_greedy_accuracy"] <= 1
    assert results["best_of_n"]["n"] == 2 and results["best_of_n"]["num_questions"] == 16
    assert [it for it, _ in results["ppo_held_out_accuracy"]] == [0, 1, 2]
    assert results["ppo_held_out_accuracy"][0][1] == results["sft_greedy_accuracy"]  # same actor, same eval
    assert (run / "ppo" / "plots").is_dir() and any((run / "ppo" / "plots").glob("*.png"))
    for stage in ("sft", "critic", "ppo/actor", "ppo/critic"):
        assert (run / stage / "config.json").is_file(), stage

    # A rerun finds every stage's output and trains nothing again.
    stamps = {
        p: p.stat().st_mtime_ns
        for p in (run / "sft" / "model.safetensors", run / "critic" / "model.safetensors")
    }
    ppo_log = MetricsLog(run / "ppo").read()
    again = demo.main(_argv(tmp_path))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert MetricsLog(run / "ppo").read() == ppo_log
    for key in (
        "sft_greedy_accuracy",
        "sft_sampled",
        "critic_on_held_out_labels",
        "best_of_n",
        "ppo_held_out_accuracy",
    ):
        assert as_json(again[key]) == as_json(results[key]), key
