"""Step advantages of DAPO: each candidate's value against the mean of its state's candidates. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def candidate_advantages(values: Sequence[float]) -> list[float]:
    """``A_i = q_i - mean_j q_j`` over one state's candidates (``q_i = V(s + a_i)``)."""
    if not values:
        raise ValueError("a state needs at least one candidate")
    mean = sum(values) / len(values)
    return [float(q) - mean for q in values]


def has_spread(values: Sequence[float], threshold: float) -> bool:
    """Whether a state trains: two or more candidates whose values span at least ``threshold``.

    A state with one candidate, or with all values equal, has no advantage to learn from even at
    threshold 0 (every advantage is 0).
    """
    if len(values) < 2:
        return False
    spread = max(values) - min(values)
    return spread > 0 and spread >= threshold


@dataclass
class StateSelection:
    """Which states train, and why the others do not (counted, never an error)."""

    kept: list[int]
    single_candidate: int = 0
    all_equal: int = 0
    below_threshold: int = 0

    @property
    def skipped(self) -> int:
        return self.single_candidate + self.all_equal + self.below_threshold


def select_states(values_per_state: Sequence[Sequence[float]], threshold: float) -> StateSelection:
    """Indices of the states that train (:func:`has_spread`), with the skipped ones counted by reason."""
    selection = StateSelection(kept=[])
    for index, values in enumerate(values_per_state):
        if len(values) < 2:
            selection.single_candidate += 1
        elif max(values) == min(values):
            selection.all_equal += 1
        elif not has_spread(values, threshold):
            selection.below_threshold += 1
        else:
            selection.kept.append(index)
    return selection
