"""Rewards: check a completion's final answer against a gold answer with math-verify, under a hard timeout.

- :mod:`~llmac.rewards.answers`: find the final-answer span of a text and judge it with math-verify.
- :mod:`~llmac.rewards.verifier`: :class:`Verifier`, which judges batches in a supervised worker
  process (:mod:`~llmac.rewards.worker`), kills items past their timeout and counts every failure.
- :mod:`~llmac.rewards.registry`: the math reward, :func:`answer_key` for majority voting, and the
  registry behind :func:`get_reward_fn`.

The worker imports this package, so keep it (and ``llmac/__init__.py``) free of heavy imports.
"""

from llmac.rewards.answers import FinalAnswer, Outcome, extract_final_answer, judge
from llmac.rewards.registry import (
    RewardFn,
    answer_key,
    answer_keys,
    default_verifier,
    get_reward_fn,
    math_reward,
    math_rewards,
    register_reward,
    registered_rewards,
    set_default_verifier,
)
from llmac.rewards.verifier import RewardStats, Verifier, VerifierConfig, logger

__all__ = [
    "FinalAnswer",
    "Outcome",
    "RewardFn",
    "RewardStats",
    "Verifier",
    "VerifierConfig",
    "answer_key",
    "answer_keys",
    "default_verifier",
    "extract_final_answer",
    "get_reward_fn",
    "judge",
    "logger",
    "math_reward",
    "math_rewards",
    "register_reward",
    "registered_rewards",
    "set_default_verifier",
]
