"""The demo's pipeline stages on the tiny actor: each runs its recipe from the SFT'd actor, reports the
figures it is judged by against the actor's own, and a rerun with the same inputs reuses its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmac import demo_pipelines
from llmac.config import ModelConfig
from llmac.data.tasks import TaskConfig
from llmac.demo_pipelines import DemoRun, run_demo_pipelines
from llmac.engines import EngineConfig
from llmac.metrics_log import MetricsLog

TASK = "\n".join(["task: arithmetic_mixed", "answer_only_share: 0.6", "num_train: 64", "num_eval: 8"])
RECIPES = {
    "dapo": """
num_solutions: 4
keep_solutions: 4
solution_max_new_tokens: 48
questions_per_shard: 8
num_rollouts: 2
max_new_tokens: 48
beta: 0.5
learning_rate: 1.0e-4
states_per_batch: 4
eval_every: 2
checkpoint_every: 0
""",
    "critique_sft": """
num_problems: 16
solutions_per_problem: 2
balance: false
solution_max_new_tokens: 48
max_steps: 4
per_device_train_batch_size: 8
learning_rate: 1.0e-3
max_length: 256
report_to: none
save_strategy: "no"
""",
    "critique_rl": """
num_iterations: 1
prompts_per_iteration: 4
samples_per_prompt: 2
max_new_tokens: 64
actor_max_new_tokens: 48
refine_max_new_tokens: 48
eval_every: 0
checkpoint_every: 0
mini_batch_size: 8
micro_batch_size: 8
""",
    "mcts": """
iterations: 2
branching: 2
max_children: 2
max_depth: 6
max_step_tokens: 24
rounds: 2
questions_per_round: 4
trees_per_batch: 4
leaf: rollouts
num_rollouts: 1
rollout_max_new_tokens: 48
sft_learning_rate: 1.0e-3
sft_epochs: 1
sft_batch_size: 8
""",
}


@pytest.fixture
def run(tiny_actor_dir, tmp_path) -> DemoRun:
    recipes = {}
    for name, text in RECIPES.items():
        recipes[name] = str(tmp_path / f"{name}.yaml")
        (tmp_path / f"{name}.yaml").write_text(text + TASK)
    task = TaskConfig(task="arithmetic_mixed", answer_only_share=0.6, num_train=64, num_eval=8)
    engine = EngineConfig(engine="hf", engine_dtype="float32")
    return DemoRun(tmp_path / "demo", ModelConfig(model_name_or_path=str(tiny_actor_dir)), task, engine,
                   seed=0, sft_accuracy=0.25, recipes=recipes)  # fmt: skip


def test_dapo_stage_trains_from_the_actor_and_a_rerun_reuses_it(run, monkeypatch):
    report = run_demo_pipelines(run, ["dapo"])["dapo"]
    evals = [r for r in MetricsLog(run.run_dir / "dapo" / "run").read() if "eval_accuracy" in r]
    assert evals[0]["iteration"] == 0 and evals[-1]["iteration"] > 0  # start and end, on the held-out split
    assert report.results["held_out_accuracy"] == evals[-1]["eval_accuracy"]
    assert report.results["gain"] == pytest.approx(evals[-1]["eval_accuracy"] - 0.25)
    build = report.results["build"]
    assert (
        build["questions"] == 64 and build["completions"] == build["solutions_sampled"] + build["mc_rollouts"]
    )
    assert "DAPO" in report.lines[0] and "Direct Advantage Policy Optimization" in report.lines[0]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage with the same inputs was trained again")

    monkeypatch.setattr("llmac.dapo.trainer.run_dapo_train", refuse)
    assert run_demo_pipelines(run, ["dapo"])["dapo"].results == report.results


def test_critique_stage_reports_both_critics_and_reuses_them(run, monkeypatch):
    report = run_demo_pipelines(run, ["critique"])["critique"]
    assert set(report.results) == {"sft", "stage1"}
    for name, metrics in report.results.items():
        saved = json.loads((run.run_dir / "critique" / f"eval-{name}" / "metrics.json").read_text())
        assert saved == metrics and metrics["problems"] == 8 and metrics["samples_per_problem"] == 8
        greedy = metrics["refine"]["greedy"]
        assert greedy["delta"] == pytest.approx(greedy["acc_refine"] - greedy["acc"])
        assert 0 <= metrics["best_of_n"]["by_verdict"] <= 1
    assert (run.run_dir / "critique" / "rl" / "critic" / "config.json").is_file()
    assert len(report.lines) == 3 and "stage1: Acc@Dis" in report.lines[2]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage with the same inputs was run again")

    for name in ("run_critique_sft", "run_critique_eval"):
        monkeypatch.setattr(f"llmac.critique.{'sft' if 'sft' in name else 'evaluate'}.{name}", refuse)
    monkeypatch.setattr("llmac.critique.trainer.run_critique_rl", refuse)
    assert run_demo_pipelines(run, ["critique"])["critique"].results == report.results


def test_mcts_stage_reports_each_round_and_reuses_it(run, monkeypatch):
    report = run_demo_pipelines(run, ["mcts"])["mcts"]
    rounds = report.results["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["questions"] == 4 for r in rounds)
    assert all(0 <= r["held_out_accuracy"] <= 1 and r["completions"] > 0 for r in rounds)
    saved = [
        json.loads(line) for line in (run.run_dir / "mcts" / "run" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["completions"] for r in saved] == [r["completions"] for r in rounds]
    assert len(report.lines) == 3 and "round 2:" in report.lines[2]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage with the same inputs was run again")

    monkeypatch.setattr("llmac.mcts.expert_iteration.run_expert_iteration", refuse)
    assert run_demo_pipelines(run, ["mcts"])["mcts"].results == report.results


def test_every_registered_pipeline_has_a_demo_recipe_field():
    from llmac.demo import DemoConfig

    config = DemoConfig()
    assert config.pipelines == list(demo_pipelines.DEMO_PIPELINES)
    assert set(demo_pipelines.pipeline_recipes(config)) == {"dapo", "critique_sft", "critique_rl", "mcts"}
    for recipe in demo_pipelines.pipeline_recipes(config).values():
        assert (Path(__file__).parent.parent / recipe).is_file(), recipe
