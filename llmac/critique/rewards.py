"""Critique-RL's rewards for the critic (pure; ALGORITHMS.md section 6).

Each reward scores one critique from a :class:`CritiqueOutcome`. The oracle correctness is that of
the actor's original answer; a critique without a readable final verdict (``verdict=None``) is
never rewarded as if it had judged right, whatever the answer was.

- ``"discrimination"`` (stage I): +1 when the verdict equals the oracle correctness, else -1.
- ``"helpfulness"`` (stage II): ``1[refined answer correct] + 0.2`` when the verdict is right, -1 when
  it is wrong.
- ``"delta"`` (r_delta): +1 wrong -> right after refinement, -1 right -> wrong, else 0.
- ``"correct"`` (r_correct): 1 when the refined answer is correct, else 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llmac.registry import Registry

VERDICT_BONUS = 0.2  # stage II's reward for a right verdict, on top of the refinement's success


@dataclass(frozen=True)
class CritiqueOutcome:
    """What one critique led to: the original answer's correctness, the critique's final verdict
    (True = "Correct", None = missing) and, after refinement, the refined answer's correctness."""

    original_correct: bool
    verdict: bool | None
    refined_correct: bool | None = None


CritiqueReward = Callable[[CritiqueOutcome], float]

_REWARDS: Registry[CritiqueReward] = Registry("critique reward")
critique_reward_names = _REWARDS.names
get_critique_reward = _REWARDS.get


def register_critique_reward(name: str) -> Callable[[CritiqueReward], CritiqueReward]:
    """Decorator: make a critique reward available to :func:`get_critique_reward` under ``name``."""
    return lambda fn: _REWARDS.add(name, fn)


def critique_rewards(name: str, outcomes: Sequence[CritiqueOutcome]) -> list[float]:
    """The reward ``name`` of each outcome."""
    reward = get_critique_reward(name)
    return [reward(outcome) for outcome in outcomes]


def verdict_is_right(outcome: CritiqueOutcome) -> bool:
    """Whether the critique's final verdict matches the oracle (a missing verdict never does)."""
    return outcome.verdict is not None and outcome.verdict == outcome.original_correct


def _refined(outcome: CritiqueOutcome, reward: str) -> bool:
    if outcome.refined_correct is None:
        raise ValueError(
            f"critique reward {reward!r} needs the refined answer's correctness (refined_correct)"
        )
    return outcome.refined_correct


@register_critique_reward("discrimination")
def discrimination_reward(outcome: CritiqueOutcome) -> float:
    """Stage I: +1 for a right verdict, -1 otherwise."""
    return 1.0 if verdict_is_right(outcome) else -1.0


@register_critique_reward("helpfulness")
def helpfulness_reward(outcome: CritiqueOutcome) -> float:
    """Stage II: ``1[refined correct] + 0.2`` for a right verdict, -1 for a wrong or missing one."""
    if not verdict_is_right(outcome):
        return -1.0
    return float(_refined(outcome, "helpfulness")) + VERDICT_BONUS


@register_critique_reward("delta")
def delta_reward(outcome: CritiqueOutcome) -> float:
    """r_delta: +1 wrong -> right, -1 right -> wrong, 0 when refinement kept the correctness."""
    return float(_refined(outcome, "delta")) - float(outcome.original_correct)


@register_critique_reward("correct")
def correct_reward(outcome: CritiqueOutcome) -> float:
    """r_correct: 1 when the refined answer is correct, else 0."""
    return float(_refined(outcome, "correct"))
