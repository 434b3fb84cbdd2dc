"""``llmac dapo build`` (Direct Advantage Policy Optimization): states and candidates from sampled
solutions, MC values through the critic's labeller, skipped states counted, and a killed build that
reruns to the identical dataset."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset

from llmac.critic.labelling import MCLabelConfig
from llmac.dapo.build import (
    QUESTION_FEATURES,
    critic_labels_of,
    read_build_stats,
    save_states,
    states_of,
    value_questions,
)
from llmac.dapo.config import DAPOBuildConfig
from llmac.data import arithmetic_dataset
from llmac.engines.hf import HFEngine
from llmac.errors import ConfigError

BUILD = DAPOBuildConfig(num_solutions=4, keep_solutions=4, solution_max_new_tokens=32, questions_per_shard=2)
MC = MCLabelConfig(num_rollouts=2, max_new_tokens=24, seed=3)


def parity_reward(texts, golds):
    """Depends on every character of the text (the tiny actor rarely gets a sum right: math rewards
    would be all zero, and every value equal)."""
    return [float(len(t) % 2 == 0) for t in texts]


@pytest.fixture(scope="module")
def hf_engine(tiny_actor_dir):
    return HFEngine(tiny_actor_dir, dtype="float32")


@pytest.fixture(scope="module")
def questions():
    return arithmetic_dataset(4, seed=31).select_columns(["question", "answer"])


@pytest.fixture(scope="module")
def valued(hf_engine, questions, tmp_path_factory):
    """An uninterrupted build's valued questions."""
    shards = tmp_path_factory.mktemp("full") / "shards"
    return value_questions(hf_engine, questions, BUILD, MC, parity_reward, shards, progress=False)


class CrashingEngine:
    """The HF engine, dying like a killed job on its ``crash_on``-th continuation call; counts calls."""

    def __init__(self, engine, crash_on: int | None = None) -> None:
        self.engine, self.crash_on, self.calls = engine, crash_on, 0
        self.tokenizer, self.delimiter, self.model_path = (
            engine.tokenizer,
            engine.delimiter,
            engine.model_path,
        )

    def generate(self, prompts, sampling):
        return self.engine.generate(prompts, sampling)

    def continue_from(self, prompts, prefixes, sampling):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt
        return self.engine.continue_from(prompts, prefixes, sampling)


def test_values_of_a_build(valued, questions):
    assert valued["question_index"] == [0, 1, 2, 3] and valued["answer"] == questions["answer"]
    for row in valued:
        assert row["sampled"] == 4 and 1 <= len(row["solutions"]) <= 4
        nodes = list(zip(map(tuple, row["node_states"]), row["node_steps"], row["node_last"], strict=True))
        assert len(set(nodes)) == len(nodes)  # de-duplicated
        mc_valued = [v for v, last in zip(row["node_values"], row["node_last"], strict=True) if not last]
        assert all(v in (0.0, 0.5, 1.0) for v in row["node_values"])  # n = 2 continuations, or an outcome
        assert row["mc_rollouts"] == 2 * len(mc_valued)  # value_all_steps: every step that goes on
        for steps, reward in zip(row["solutions"], row["solution_rewards"], strict=True):
            last = nodes.index((tuple(steps[:-1]), steps[-1], True))
            assert row["node_values"][last] == reward  # a last step is worth its outcome
    states, stats = states_of(valued)
    assert stats["completions"] == 16 + sum(valued["mc_rollouts"])  # solutions + every MC rollout
    assert stats["states"] == len(states) and stats["candidates"] == sum(map(len, states["candidates"]))
    assert all(len(c) >= 2 for c in states["candidates"])


def test_a_killed_build_reruns_to_the_identical_dataset(hf_engine, questions, valued, tmp_path):
    shards = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        value_questions(CrashingEngine(hf_engine, crash_on=2), questions, BUILD, MC, parity_reward, shards,
                        progress=False)  # fmt: skip
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000"]
    engine = CrashingEngine(hf_engine)
    resumed = value_questions(engine, questions, BUILD, MC, parity_reward, shards, progress=False)
    assert engine.calls == 1  # the first shard was loaded, not sampled again
    assert resumed.to_dict() == valued.to_dict()
    # the whole output (states and counts) too
    for name, data in (("a", valued), ("b", resumed)):
        save_states(*states_of(data), tmp_path / name)
    assert read_build_stats(tmp_path / "a") == read_build_stats(tmp_path / "b")


def _row(index, states, steps, last, values, solutions=(), rewards=()):
    return {"question_index": index, "question": f"q{index}", "answer": "1", "solutions": list(solutions),
            "solution_rewards": list(rewards), "node_states": states, "node_steps": steps, "node_last": last,
            "node_values": values, "node_visits": [1] * len(steps), "sampled": 2, "mc_rollouts": 8}  # fmt: skip


def test_single_candidate_states_are_skipped_and_counted_and_critic_rows_follow_the_paths():
    rows = [
        # state () has one candidate "a"; state ("a",) has "b" (goes on) and "c" (ends)
        _row(
            0,
            [[], ["a"], ["a"], ["a", "b"]],
            ["a", "b", "c", "d"],
            [False, False, True, True],
            [0.5, 0.25, 1.0, 0.0],
            solutions=[["a", "b", "d"], ["a", "c"]],
            rewards=[0.0, 1.0],
        ),  # fmt: skip
        _row(1, [[]], ["z"], [True], [0.0]),  # one solution of one step: one state, one candidate
    ]
    valued = Dataset.from_list(rows, features=QUESTION_FEATURES)
    states, stats = states_of(valued)
    assert states.to_list() == [{"question_index": 0, "question": "q0", "answer": "1", "state": ["a"],
                                 "candidates": ["b", "c"], "last": [False, True], "mc_values": [0.25, 1.0],
                                 "visits": [1, 1]}]  # fmt: skip
    assert stats["states_single_candidate"] == 3 and stats["states"] == 1 and stats["completions"] == 20
    labels = critic_labels_of(valued, "\n")
    assert labels["completions"] == [["a", "b", "d"], ["a", "c"]]
    assert labels["labels"] == [[0.5, 0.25, 0.0], [0.5, 1.0]]
    assert labels["hard_labels"] == [[1, 1, 0], [1, 1]]
    rows[0]["node_values"][1] = math.nan
    with pytest.raises(ValueError, match="value at every step"):
        critic_labels_of(Dataset.from_list(rows, features=QUESTION_FEATURES), "\n")


def test_build_config_is_checked():
    with pytest.raises(ConfigError, match="keep_solutions"):
        DAPOBuildConfig(num_solutions=4, keep_solutions=6)
    with pytest.raises(ConfigError, match="critic_labels_dir needs value_all_steps"):
        DAPOBuildConfig(value_all_steps=False, critic_labels_dir="x")
