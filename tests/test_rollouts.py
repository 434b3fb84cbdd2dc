"""Rollout jobs write finished batches as shards and resume after a crash without resampling them."""

from __future__ import annotations

import pytest

from llmac.data import arithmetic_dataset
from llmac.engines import SamplingConfig
from llmac.engines.hf import HFEngine
from llmac.rewards import math_rewards
from llmac.rollouts import sample_rollouts

SAMPLING = SamplingConfig(n=2, temperature=1.0, max_new_tokens=40, seed=3)


class CountingEngine:
    """The real HF engine, counting the prompts it is asked to sample."""

    def __init__(self, engine: HFEngine) -> None:
        self.engine, self.prompts_sampled = engine, 0
        self.tokenizer, self.delimiter = engine.tokenizer, engine.delimiter

    def generate(self, prompts, sampling):
        self.prompts_sampled += len(prompts)
        return self.engine.generate(prompts, sampling)


def test_killed_rollout_job_resumes_to_the_same_dataset(tiny_actor_dir, tmp_path):
    rows = arithmetic_dataset(10, seed=5)
    engine = CountingEngine(HFEngine(tiny_actor_dir, dtype="float32"))
    uninterrupted = sample_rollouts(engine, rows, SAMPLING, math_rewards, batch_size=3, progress=False)

    calls = {"n": 0}

    def crash_on_third_batch(completions, answers):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the job is killed while scoring batch 3 of 4
        return math_rewards(completions, answers)

    shards = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        sample_rollouts(
            engine, rows, SAMPLING, crash_on_third_batch, batch_size=3, shard_dir=shards, progress=False
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
    with pytest.raises(ValueError, match="other prompts or sampling settings"):
        sample_rollouts(
            engine, arithmetic_dataset(2, seed=2), SAMPLING, math_rewards, shard_dir=shards, progress=False
        )
