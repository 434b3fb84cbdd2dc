"""The README's main job, shrunk: the whole spine runs end to end and a rerun reuses every stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset
from model_copies import copy_with_new_mtimes, nudged_copy

from llmac import demo
from llmac.demo_stages import config_inputs, dataset_stage, model_stage
from llmac.fingerprints import is_complete_model
from llmac.metrics_log import MetricsLog
from llmac.outputs import MARKER, write_marker

PPO_RECIPE = """
advantage_estimator: grpo  # the demo's PPO stage replaces it by step GAE over its critic
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
        "--run_dir", str(tmp_path / "demo"), "--task", "arithmetic_mixed", "--num_train", "2000", "--num_eval", "16",
        "--max_steps", "100", "--per_device_train_batch_size", "32", "--learning_rate", "1e-3",
        "--warmup_steps", "10", "--logging_steps", "50", "--save_steps", "100", "--report_to", "none",
        "--bf16", "false", "--max_length", "128", "--seed", "0",
        "--engine", "vllm", "--engine_dtype", "float32", "--eval_samples", "2", "--eval_max_new_tokens", "48",
        "--critic_questions", "8", "--critic_solutions", "2", "--mc_rollouts", "2", "--held_out_labelled", "16",
        "--critic_max_steps", "5", "--critic_batch_size", "8", "--ppo_recipe", str(recipe),
        "--pipelines", "none",  # the pipelines' stages: tests/test_demo_pipelines.py
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
    for stage in ("sft", "critic", "ppo/actor", "ppo/critic"):  # ppo/critic: step GAE trained a value model
        assert (run / stage / "config.json").is_file(), stage
    # The exported actor greedy-decodes the same tokens in plain transformers and in vLLM (float32 both),
    # and the exported critic scores as the trained one does.
    exported = results["export"]
    assert exported["greedy_prompts"] == 16 and exported["greedy_identical"] == 16, exported["greedy_parity"]
    assert exported["critic_max_abs_gap"] < 1e-5
    assert (run / "export" / "actor" / "README.md").is_file() and (
        run / "export" / "critic" / "README.md"
    ).is_file()

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


# -- "already done" checks: a stage is skipped only for a complete output made from the same inputs ---
def _rows(n: int) -> Dataset:
    return Dataset.from_dict({"x": list(range(n))})


def test_a_dataset_stage_is_redone_when_truncated_or_made_from_other_inputs(tmp_path):
    path, built = tmp_path / "critic_labels", []

    def build(shards: Path) -> Dataset:
        built.append(shards)
        shards.mkdir()  # where the sampler would keep its finished batches
        return _rows(2000)

    assert dataset_stage(path, "key-1", build)["x"] == list(range(2000))
    assert len(built) == 1 and not built[0].exists()  # its shards are gone once the dataset is saved
    assert dataset_stage(path, "key-1", build)["x"] == list(range(2000)) and len(built) == 1

    (arrow,) = path.glob("*.arrow")
    arrow.write_bytes(arrow.read_bytes()[:-500])  # half-written: the stamp matches, the rows do not load
    assert dataset_stage(path, "key-1", build)["x"] == list(range(2000)) and len(built) == 2

    dataset_stage(path, "key-2", build)  # other inputs (or code): redone
    assert len(built) == 3 and built[2].name.startswith("critic_labels.shards-key-2")  # shards per key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["critic_labels"]  # llmac's stale ones are gone

    shutil.rmtree(path)
    path.mkdir()
    (path / "notes.txt").write_text("mine")  # a folder llmac did not write: moved aside, not deleted
    dataset_stage(path, "key-2", build)
    assert len(built) == 4 and (tmp_path / "critic_labels.stale-1" / "notes.txt").read_text() == "mine"


def test_a_model_stage_is_redone_when_truncated_or_stale_and_resumed_when_interrupted(
    tiny_actor_dir, tmp_path
):
    path, runs = tmp_path / "sft", []

    def train() -> None:  # a trainer: claims its folder, resumes what is in it, writes the model there
        runs.append(sorted(p.name for p in path.iterdir() if p.name != MARKER) if path.exists() else None)
        path.mkdir(exist_ok=True)
        write_marker(path, "sft")
        shutil.copytree(tiny_actor_dir, path, dirs_exist_ok=True)

    model_stage(path, "key-1", train)
    model_stage(path, "key-1", train)
    assert runs == [None]
    assert not (tmp_path / ".sft.llmac-stage.json").exists()  # the running stamp is gone once done

    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    model_stage(path, "key-1", train)
    assert runs == [None, None] and is_complete_model(path)

    model_stage(path, "key-2", train)  # another actor, task or code version
    assert runs == [None, None, None]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]

    # Killed mid-training with key 3: a rerun with key 3 resumes in the folder, one with key 4 does not.
    def killed_run(key: str) -> None:
        shutil.rmtree(path)
        (path / "checkpoint-10").mkdir(parents=True)
        write_marker(path, "sft")
        (tmp_path / ".sft.llmac-stage.json").write_text(json.dumps({"key": key, "state": "running"}))

    killed_run("key-3")
    model_stage(path, "key-3", train)
    assert runs[-1] == ["checkpoint-10"]
    killed_run("key-3")
    model_stage(path, "key-4", train)
    assert runs[-1] is None

    shutil.rmtree(path)
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    model_stage(path, "key-4", train)
    assert runs[-1] is None and (tmp_path / "sft.stale-1" / "notes.txt").read_text() == "mine"


def test_stage_keys_read_model_content_not_paths(tiny_actor_dir, tmp_path):
    from llmac.config import ModelConfig

    copy = copy_with_new_mtimes(tiny_actor_dir, tmp_path / "copy")
    nudged = nudged_copy(tiny_actor_dir, tmp_path / "nudged")
    key = lambda path: config_inputs(ModelConfig(model_name_or_path=str(path)))  # noqa: E731
    assert key(copy) == key(tiny_actor_dir) != key(nudged)
    assert key("tiny") == {**key(copy), "model_name_or_path": "tiny"}
