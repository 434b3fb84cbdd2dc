"""The RL sampler's held-out evaluation by hand, and who closes the rollout engine."""

from __future__ import annotations

import pytest

from llmac.engines.base import Completion, SamplingConfig
from llmac.rl.sampler import Prompts, Sampler, SamplerSettings, held_out_accuracy

SETTINGS = SamplerSettings(prompts_per_iteration=2, samples_per_prompt=2, temperature=1.0, top_p=1.0,
                           max_new_tokens=16, seed=3, reward="math", dynamic_sampling=False,
                           max_sampling_rounds=1, async_rollouts=False, checkpoint_every=0,
                           num_iterations=1, eval_samples=3)  # fmt: skip


class ScriptedEngine:
    """Greedy: ``greedy[i]`` for prompt ``i``; sampled: ``sampled[i]`` (n texts). Records the samplings."""

    def __init__(self, greedy: list[str], sampled: list[list[str]]) -> None:
        self.greedy, self.sampled, self.samplings, self.closed = greedy, sampled, [], False

    def generate(self, prompt_ids, sampling: SamplingConfig):
        self.samplings.append(sampling)
        index = {(1,): 0, (2,): 1}
        texts = [
            [self.greedy[index[tuple(p)]]] if sampling.temperature == 0 else self.sampled[index[tuple(p)]]
            for p in prompt_ids
        ]
        return [[Completion([5], [0.0], "stop", text=t) for t in group] for group in texts]

    def close(self) -> None:
        self.closed = True


def exact(texts, golds):
    return [float(t.rstrip().endswith(f"Answer: {g}")) for t, g in zip(texts, golds, strict=True)]


def test_held_out_accuracy_greedy_and_sampled_by_hand():
    engine = ScriptedEngine(
        greedy=["Answer: 4", "3+4=7\nAnswer: 7"],  # right (direct), right (worked)
        sampled=[["Answer: 4", "1+3=4\nAnswer: 4", "Answer: 5"], ["Answer: 9", "x\nAnswer: 7", "Answer: 7"]],
    )
    result = held_out_accuracy(engine, Prompts([[1], [2]], ["4", "7"]), SETTINGS, exact)
    assert result["eval_accuracy"] == 1.0
    assert result["eval_direct_answer_share"] == 0.5
    assert result["eval_sampled_accuracy"] == pytest.approx(4 / 6)  # 4, 4 | 7, 7 right of 6
    assert result["eval_sampled_direct_answer_share"] == pytest.approx(4 / 6)
    greedy, sampled = engine.samplings
    assert (greedy.n, greedy.temperature) == (1, 0.0)
    assert (sampled.n, sampled.temperature, sampled.seed, sampled.max_new_tokens) == (3, 1.0, 3, 16)


def test_no_sampled_evaluation_without_eval_samples():
    engine = ScriptedEngine(greedy=["Answer: 5", "Answer: 7"], sampled=[[], []])
    settings = SamplerSettings(**{**SETTINGS.__dict__, "eval_samples": 0})
    result = held_out_accuracy(engine, Prompts([[1], [2]], ["4", "7"]), settings, exact)
    assert result == {"eval_accuracy": 0.5, "eval_direct_answer_share": 1.0}


@pytest.mark.parametrize("owns_engine", [True, False])
def test_the_sampler_closes_only_its_own_engine(owns_engine):
    engine = ScriptedEngine(greedy=[], sampled=[])
    prompts = Prompts([[1]], ["4"])
    sampler = Sampler(SETTINGS, accelerator=None, engine=engine, train=prompts, held_out=prompts,
                      reward_fn=exact, owns_engine=owns_engine)  # fmt: skip
    sampler.close()
    assert engine.closed is owns_engine
