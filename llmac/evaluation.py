"""Accuracy metrics over rollouts: pass@1, pass@k, maj@k (majority vote over k samples) and the share
of direct answers (no step before ``Answer:``).

The metric functions are pure: they take per-prompt lists of rewards (and vote keys) so they can be
tested on hand-made numbers; :func:`evaluate` wires them to an engine and a task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from llmac.engines.base import RolloutEngine, SamplingConfig
from llmac.rollouts import RewardFn, group_rows, sample_rollouts

# completions -> one vote key each (the canonical final answer, None when there is none)
AnswerKeysFn = Callable[[list[str]], list[str | None]]


def pass_at_1(rewards: Sequence[Sequence[float]]) -> float:
    """Mean over prompts of the fraction of correct samples (the unbiased pass@1 estimate)."""
    if not rewards:
        raise ValueError("pass@1 of no prompts")
    return sum(sum(r) / len(r) for r in rewards) / len(rewards)


def pass_at_k(rewards: Sequence[Sequence[float]]) -> float:
    """Fraction of prompts with at least one correct sample among their k."""
    if not rewards:
        raise ValueError("pass@k of no prompts")
    return sum(max(r) > 0 for r in rewards) / len(rewards)


def majority_at_k(rewards: Sequence[Sequence[float]], keys: Sequence[Sequence[str | None]]) -> float:
    """Fraction of prompts whose most frequent answer (by vote key) is correct.

    Samples with no answer (key ``None``) do not vote; a prompt where nobody votes counts as wrong.
    Ties go to the answer seen first, so the result does not depend on hash order.
    """
    if len(rewards) != len(keys):
        raise ValueError(f"{len(rewards)} reward groups but {len(keys)} key groups")
    correct = 0
    for group_rewards, group_keys in zip(rewards, keys, strict=True):
        votes = Counter(k for k in group_keys if k is not None)
        if not votes:
            continue
        best = max(votes.values())
        winner = next(k for k in group_keys if k is not None and votes[k] == best)
        correct += group_rewards[group_keys.index(winner)] > 0
    return correct / len(rewards)


def is_direct_answer(completion: str, marker: str = "Answer:") -> bool:
    """Whether ``completion`` gives its answer with no step before it (only whitespace before ``marker``)."""
    before, found, _ = completion.partition(marker)
    return bool(found) and not before.strip()


def direct_answer_share(completions: Sequence[str]) -> float:
    """Fraction of ``completions`` that answer directly (see :func:`is_direct_answer`)."""
    if not completions:
        raise ValueError("direct-answer share of no completions")
    return sum(map(is_direct_answer, completions)) / len(completions)


@dataclass
class EvalResult:
    """Accuracy figures of one evaluation run."""

    num_prompts: int
    samples_per_prompt: int
    pass_at_1: float
    pass_at_k: float
    maj_at_k: float
    direct_answer_share: float  # of all samples: answered with no step before "Answer:"

    def summary(self) -> str:
        k = self.samples_per_prompt
        return (
            f"pass@1={self.pass_at_1:.4f} pass@{k}={self.pass_at_k:.4f} maj@{k}={self.maj_at_k:.4f} "
            f"direct={self.direct_answer_share:.4f} ({self.num_prompts} prompts x {k} samples)"
        )


def metrics_from_rollouts(rollouts: Dataset, answer_keys: AnswerKeysFn) -> EvalResult:
    """Accuracy figures of a rollout dataset (see :mod:`llmac.rollouts` for its columns)."""
    groups = group_rows(rollouts["prompt_index"])
    completions = list(rollouts["completion"])
    reward, key = list(rollouts["reward"]), answer_keys(completions)
    rewards = [[reward[i] for i in g] for g in groups]
    keys = [[key[i] for i in g] for g in groups]
    return EvalResult(
        num_prompts=len(groups),
        samples_per_prompt=max(len(g) for g in groups),
        pass_at_1=pass_at_1(rewards),
        pass_at_k=pass_at_k(rewards),
        maj_at_k=majority_at_k(rewards, keys),
        direct_answer_share=direct_answer_share(completions),
    )


def evaluate(
    engine: RolloutEngine,
    rows: Dataset,
    sampling: SamplingConfig,
    reward_fn: RewardFn,
    answer_keys: AnswerKeysFn,
    shard_dir: str | Path | None = None,
) -> tuple[EvalResult, Dataset]:
    """Sample ``sampling.n`` completions per row, verify them, and score pass@1 / pass@k / maj@k."""
    rollouts = sample_rollouts(engine, rows, sampling, reward_fn, shard_dir=shard_dir)
    return metrics_from_rollouts(rollouts, answer_keys), rollouts
