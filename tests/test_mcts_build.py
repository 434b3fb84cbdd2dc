"""``llmac mcts build``: trees saved as rows and rebuilt exactly, a killed build that reruns to the
identical output, processes that each search their share of shards, exports that load back and go
to the Hub folder layout."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from llmac.data import arithmetic_dataset
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig
from llmac.engines.hf import HFEngine
from llmac.errors import ConfigError, OutputError
from llmac.hub import export_dataset
from llmac.mcts.build import (
    build_tree_rows,
    load_trees,
    read_build_stats,
    run_build,
    tree_counts,
    tree_rows,
    trees_of,
)
from llmac.mcts.config import MCTSBuildConfig
from llmac.mcts.exports import value_label_rows, verified_solution_rows
from llmac.mcts.search import SearchConfig
from llmac.models import TinyModelConfig, warm_tiny_actor
from llmac.rewards.registry import get_reward_fn

TASK = TaskConfig(task="arithmetic", num_train=4, num_eval=4, task_seed=5)
SEARCH = SearchConfig(iterations=4, branching=3, max_children=3, max_depth=4, max_step_tokens=16, seed=3)
REWARD = "test_mcts_build:length_reward"
FLAGS = ["--task", "arithmetic", "--num_train", "4", "--num_eval", "4", "--task_seed", "5",
         "--iterations", "4", "--branching", "3", "--max_children", "3", "--max_depth", "4",
         "--max_step_tokens", "16", "--seed", "3", "--questions_per_shard", "2", "--num_rollouts", "2",
         "--rollout_max_new_tokens", "24", "--exports", "value_labels,preference_pairs,verified_solutions",
         "--engine", "hf", "--engine_dtype", "float32", "--progress", "false", "--reward", REWARD]  # fmt: skip


def length_reward(texts, golds):
    """Depends on every character (the tiny actor rarely gets a sum right: math rewards would be all 0)."""
    return [float(len(t) % 3 == 0) for t in texts]


@pytest.fixture(scope="module")
def actor_dir(tmp_path_factory):
    """A very small actor warmed a few seconds on arithmetic transcripts (the session's tiny actor
    takes minutes on a busy machine; these tests need any model that writes steps)."""
    rows = arithmetic_dataset(256, seed=1234)
    config = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=0)
    return warm_tiny_actor(rows["question"], rows["solution"], tmp_path_factory.mktemp("actor"), 30, config)


def build_config(output_dir, **overrides) -> MCTSBuildConfig:
    settings = {"output_dir": str(output_dir), "questions_per_shard": 2, "num_rollouts": 2,
                "rollout_max_new_tokens": 24, "progress": False,
                "exports": "value_labels,preference_pairs,verified_solutions", "reward": REWARD}  # fmt: skip
    return MCTSBuildConfig(**{**settings, **overrides})


class CountingEngine:
    """The HF engine, counting step calls; it dies like a killed job when asked to expand a tree of
    a question outside ``survive`` (the first shard's prompts)."""

    def __init__(self, engine, survive: set[str] | None = None) -> None:
        self.engine, self.survive, self.step_calls, self.prompts = engine, survive, 0, set()
        self.tokenizer, self.delimiter, self.model_path = (
            engine.tokenizer,
            engine.delimiter,
            engine.model_path,
        )

    def sample_step(self, prompts, prefixes, sampling):
        self.step_calls += 1
        self.prompts |= set(prompts)
        if self.survive is not None and not set(prompts) <= self.survive:
            raise KeyboardInterrupt
        return self.engine.sample_step(prompts, prefixes, sampling)

    def continue_from(self, prompts, prefixes, sampling):
        return self.engine.continue_from(prompts, prefixes, sampling)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def hf_engine(actor_dir):
    return HFEngine(actor_dir, dtype="float32")


@pytest.fixture(scope="module")
def uninterrupted(actor_dir, tmp_path_factory):
    """An uninterrupted `llmac mcts build` from the command line: its output folder."""
    from llmac.cli import main

    output = tmp_path_factory.mktemp("full") / "out"
    main(["mcts", "build", "--model_name_or_path", str(actor_dir), "--output_dir", str(output), *FLAGS])
    return output


def _shape(tree):
    return [(n.depth, n.text, n.token_ids, n.prior, n.visits, n.value_sum, n.terminal, n.reward, n.correct)
            for n in tree.root.walk()]  # fmt: skip


def _folders(path):
    return {p.name: load_from_disk(str(p)).to_dict() for p in sorted(path.iterdir()) if p.is_dir()}


def test_build_output_and_tree_records(uninterrupted):
    stats = read_build_stats(uninterrupted)
    assert sorted(p.name for p in uninterrupted.iterdir() if p.is_dir()) == [
        "preference_pairs", "trees", "value_labels", "verified_solutions"]  # fmt: skip
    rows = load_from_disk(str(uninterrupted / "trees"))
    assert rows["question_index"] == [0, 1, 2, 3]
    assert rows["question"] == load_task(TASK, "rl")["question"]
    trees = load_trees(uninterrupted)
    assert stats == {**tree_counts(trees), "exports": stats["exports"]}
    expanded = sum(1 for tree in trees for node in tree.root.walk() if node.children)
    assert stats["nodes"] >= 8 and expanded >= 4  # every tree grew
    assert stats["step_samples"] % 3 == 0 and stats["step_samples"] >= 3 * expanded  # b = 3 per expansion
    assert (
        stats["rollout_tokens"] > 0
        and stats["generated_tokens"] == stats["step_tokens"] + stats["rollout_tokens"]
    )
    for tree in trees:
        # the root was visited once per iteration and every value in the tree is a mean of evaluations
        assert tree.root.visits == sum(c.visits for c in tree.root.children) and tree.root.visits >= 3
        for node in tree.nodes():
            assert node.visits >= 1 and -1.0 <= node.q <= 1.0
            assert node.terminal == (node.reward is not None)
    # rows -> trees -> rows is the identity, and the exports come out the same from rebuilt trees
    assert tree_rows(trees, rows["question_index"]).to_dict() == rows.to_dict()
    again = trees_of(tree_rows(trees, range(4)))
    assert [_shape(t) for t in again] == [_shape(t) for t in trees]
    labels = load_from_disk(str(uninterrupted / "value_labels"))
    assert labels.to_dict() == value_label_rows(again, 1, "\n").to_dict()
    assert stats["exports"]["value_labels"] == len(labels) > 0
    assert stats["exports"]["verified_solutions"] == len(verified_solution_rows(again))


def test_a_killed_build_reruns_to_the_identical_output(uninterrupted, hf_engine, actor_dir, tmp_path):
    output = tmp_path / "out"
    build, engine_config = build_config(output), EngineConfig(engine="hf", engine_dtype="float32")
    first_shard = {t.prompt for t in load_trees(uninterrupted)[:2]}
    killed = CountingEngine(hf_engine, survive=first_shard)
    with pytest.raises(KeyboardInterrupt):
        run_build(str(actor_dir), build, SEARCH, TASK, engine_config, engine=killed)
    shards = tmp_path / "out.partial" / "shards"
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000"] and not output.exists()
    # a rerun with another seed is refused rather than mixing two jobs' shards
    other = SearchConfig(**{**SEARCH.__dict__, "seed": 4})
    with pytest.raises(OutputError, match="changed: search"):
        run_build(str(actor_dir), build, other, TASK, engine_config, engine=hf_engine)
    resumed = CountingEngine(hf_engine)
    stats = run_build(str(actor_dir), build, SEARCH, TASK, engine_config, engine=resumed)
    assert resumed.prompts.isdisjoint(first_shard)  # shard 0 was loaded, not searched again
    assert _folders(output) == _folders(uninterrupted)
    assert stats == read_build_stats(output) == read_build_stats(uninterrupted)
    assert not (tmp_path / "out.partial").exists()


def test_processes_search_their_share_of_shards(uninterrupted, hf_engine, tmp_path, monkeypatch):
    questions = load_task(TASK, "rl").select_columns(["question", "answer"])
    build, reward = build_config(tmp_path / "unused"), get_reward_fn(REWARD)
    shards = tmp_path / "shards"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")  # rank 0 creates the shard store, searches shard 0 and leaves
    zero = CountingEngine(hf_engine)
    assert build_tree_rows(zero, questions, SEARCH, build, reward, shard_dir=shards, progress=False,
                           gather=False) is None  # fmt: skip
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000"]
    monkeypatch.setenv("RANK", "1")  # rank 1 searches shard 1 and gathers both
    one = CountingEngine(hf_engine)
    rows = build_tree_rows(one, questions, SEARCH, build, reward, shard_dir=shards, progress=False)
    assert zero.prompts.isdisjoint(one.prompts) and len(zero.prompts) == len(one.prompts) == 2
    assert rows.to_dict() == load_from_disk(str(uninterrupted / "trees")).to_dict()


def test_exports_go_to_the_hub_layout(uninterrupted, tmp_path):
    folder = export_dataset(uninterrupted / "value_labels", tmp_path / "hub")
    parquet = sorted((folder / "data").glob("*.parquet"))
    from datasets import Dataset

    assert (
        Dataset.from_parquet([str(p) for p in parquet]).to_dict()
        == load_from_disk(str(uninterrupted / "value_labels")).to_dict()
    )
    assert "prompt" in (folder / "README.md").read_text()


def test_build_config_is_checked():
    with pytest.raises(ConfigError, match="needs --critic"):
        MCTSBuildConfig(leaf_value="critic")
    with pytest.raises(ConfigError, match="unknown 'values'"):
        MCTSBuildConfig(exports="value_labels,values")
    assert MCTSBuildConfig(exports="rstar_pairs, value_labels,rstar_pairs").export_list() == [
        "rstar_pairs", "value_labels"]  # fmt: skip
    json.dumps(SEARCH.__dict__)
