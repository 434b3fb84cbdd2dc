"""Rollout jobs write finished batches as shards and resume after a crash without resampling them;
a rerun with another model, reward or rows is refused instead of mixing shards."""

from __future__ import annotations

from dataclasses import replace

import pytest
from model_copies import nudged_copy

from llmac.data import arithmetic_dataset
from llmac.engines import SamplingConfig
from llmac.engines.hf import HFEngine
from llmac.errors import OutputError
from llmac.rewards import math_rewards
from llmac.rollouts import sample_rollouts

SAMPLING = SamplingConfig(n=2, temperature=1.0, max_new_tokens=40, seed=3)


class CountingEngine:
    """The real HF engine, counting the prompts it is asked to sample; killed on call ``crash_on``."""

    def __init__(self, engine: HFEngine, crash_on: int | None = None) -> None:
        self.engine, self.prompts_sampled, self.calls, self.crash_on = engine, 0, 0, crash_on
        self.tokenizer, self.delimiter = engine.tokenizer, engine.delimiter
        self.model_path = engine.model_path  # what the shard store fingerprints

    def generate(self, prompts, sampling):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt  # the job is killed while sampling this batch
        self.prompts_sampled += len(prompts)
        return self.engine.generate(prompts, sampling)


def test_killed_rollout_job_resumes_to_the_same_dataset(tiny_actor_dir, tmp_path):
    rows = arithmetic_dataset(10, seed=5)
    engine = CountingEngine(HFEngine(tiny_actor_dir, dtype="float32"))
    uninterrupted = sample_rollouts(engine, rows, SAMPLING, math_rewards, batch_size=3, progress=False)

    shards = tmp_path / "shards"
    crashing = CountingEngine(engine.engine, crash_on=3)  # killed on batch 3 of 4
    with pytest.raises(KeyboardInterrupt):
        sample_rollouts(
            crashing, rows, SAMPLING, math_rewards, batch_size=3, shard_dir=shards, progress=False
        )
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000", "shard-00001"]

    engine.prompts_sampled = 0
    resumed = sample_rollouts(
        engine, rows, SAMPLING, math_rewards, batch_size=3, shard_dir=shards, progress=False
    )
    assert engine.prompts_sampled == 4  # batches 3 (3 prompts) and 4 (1 prompt) only
    assert resumed.to_dict() == uninterrupted.to_dict()


def test_shards_of_other_inputs_are_refused(tiny_actor_dir, tmp_path):
    engine = HFEngine(tiny_actor_dir, dtype="float32")
    shards = tmp_path / "shards"
    sample_rollouts(
        engine, arithmetic_dataset(2, seed=1), SAMPLING, math_rewards, shard_dir=shards, progress=False
    )
    with pytest.raises(OutputError, match="changed: answers, prompts"):
        sample_rollouts(
            engine, arithmetic_dataset(2, seed=2), SAMPLING, math_rewards, shard_dir=shards, progress=False
        )
    with pytest.raises(OutputError, match="changed: sampling"):
        sample_rollouts(
            engine, arithmetic_dataset(2, seed=1), replace(SAMPLING, seed=4), math_rewards, shard_dir=shards,
            progress=False,
        )  # fmt: skip


def length_reward(completions, answers):
    return [float(len(c) > 20) for c in completions]


def test_a_rerun_with_another_model_or_reward_is_refused(tiny_actor_dir, tmp_path):
    """The `generate` case: shards of one actor are never mixed with another actor's or reward's."""
    rows = arithmetic_dataset(4, seed=3)
    shards = tmp_path / "rollouts.shards"
    crashing = CountingEngine(HFEngine(tiny_actor_dir, dtype="float32"), crash_on=2)
    with pytest.raises(KeyboardInterrupt):  # killed after the first of two batches
        sample_rollouts(
            crashing, rows, SAMPLING, math_rewards, batch_size=2, shard_dir=shards, progress=False
        )
    written = {p: p.stat().st_mtime_ns for p in shards.rglob("*")}

    other_model = HFEngine(nudged_copy(tiny_actor_dir, tmp_path / "other_actor"), dtype="float32")
    with pytest.raises(
        OutputError, match=r"rollouts.shards holds rollout shards of another job \(changed: model\)"
    ):
        sample_rollouts(
            other_model, rows, SAMPLING, math_rewards, batch_size=2, shard_dir=shards, progress=False
        )
    with pytest.raises(OutputError, match=r"\(changed: reward\): use another output folder, or delete"):
        sample_rollouts(crashing.engine, rows, SAMPLING, length_reward, batch_size=2, shard_dir=shards,
                        progress=False)  # fmt: skip
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*")} == written  # refused before any write

    same = CountingEngine(HFEngine(tiny_actor_dir, dtype="float32"))
    resumed = sample_rollouts(
        same, rows, SAMPLING, math_rewards, batch_size=2, shard_dir=shards, progress=False
    )
    assert same.prompts_sampled == 2  # the second batch only: the first was loaded from its shard
    assert resumed["prompt_index"] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_shards_are_not_written_among_files_llmac_did_not_write(tiny_actor_dir, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    engine = HFEngine(tiny_actor_dir, dtype="float32")
    with pytest.raises(OutputError, match="is not empty and holds no rollout shards"):
        sample_rollouts(engine, arithmetic_dataset(2, seed=1), SAMPLING, math_rewards, shard_dir=folder,
                        progress=False)  # fmt: skip
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
