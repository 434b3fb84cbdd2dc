"""How good is a step critic: step AUC, first-error identification and best-of-N selection.

All functions are pure and take plain lists so they can be tested on hand-made numbers. Conventions:

- a step index of ``-1`` means "no erroneous step" (the whole solution is fine);
- a solution is correct when its reward is ``> 0``, as in :mod:`llmac.evaluation`;
- majority vote, the usual baseline for best-of-N, is :func:`llmac.evaluation.majority_at_k`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCORE_METHODS = ("min", "last", "prod")


def roc_auc(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative).

    Computed from ranks (Mann-Whitney U); a positive and a negative with equal scores count 1/2.
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1 or len(s) != len(y):
        raise ValueError(f"roc_auc: {len(s)} scores but {len(y)} labels (both must be flat lists)")
    if np.isnan(s).any():
        raise ValueError("roc_auc: scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("roc_auc: labels must be 0/1 (or booleans)")
    y = y.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"roc_auc needs both classes, got {n_pos} positives and {n_neg} negatives")
    # 1-based ranks, tied scores share the mean of the ranks they span
    _, group, counts = np.unique(s, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2
    rank_sum = mean_rank[group][y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def step_auc(
    step_values: Sequence[Sequence[float]], soft_labels: Sequence[Sequence[float]], threshold: float = 0.5
) -> float:
    """AUC of per-step critic values against per-step MC labels, pooled over all solutions.

    A step is a positive when its soft label (fraction of successful MC completions) is
    ``>= threshold``: with the default 0.5, "most completions from here still reach the answer".
    Hard 0/1 labels work too (any threshold in (0, 1]).
    """
    if len(step_values) != len(soft_labels):
        raise ValueError(
            f"step_auc: {len(step_values)} solutions with values but {len(soft_labels)} with labels"
        )
    flat_values: list[float] = []
    flat_labels: list[bool] = []
    for i, (values, labels) in enumerate(zip(step_values, soft_labels, strict=True)):
        if len(values) != len(labels):
            raise ValueError(f"step_auc: solution {i} has {len(values)} step values but {len(labels)} labels")
        flat_values.extend(values)
        flat_labels.extend(label >= threshold for label in labels)
    return roc_auc(flat_values, flat_labels)


def first_error_index(values: Sequence[float], threshold: float = 0.5) -> int:
    """Index of the first step the critic flags (value < threshold), -1 when none is flagged."""
    return next((t for t, v in enumerate(values) if v < threshold), -1)


def first_error_from_labels(labels: Sequence[float]) -> int:
    """Reference first error: the first step with hard label 0, -1 when every step is fine.

    Takes soft or hard labels: a hard label is 0 exactly when the soft label is 0, i.e. no MC
    completion from that step reached the right answer.
    """
    for t, label in enumerate(labels):
        if not 0 <= label <= 1:
            raise ValueError(f"label of step {t} is {label}, expected a value in [0, 1]")
        if label == 0:
            return t
    return -1


def process_bench_f1(predicted_first_errors: Sequence[int], true_first_errors: Sequence[int]) -> dict:
    """ProcessBench-style first-error identification scores.

    ``acc_erroneous``: on solutions with an error, how often the predicted index is exactly the true one;
    ``acc_correct``: on error-free solutions (true index -1), how often the prediction is -1 too;
    ``f1``: their harmonic mean (0 when either is 0). Both kinds of solution must be present.
    """
    if len(predicted_first_errors) != len(true_first_errors):
        raise ValueError(
            f"process_bench_f1: {len(predicted_first_errors)} predictions but {len(true_first_errors)} references"
        )
    for name, indices in (("predicted", predicted_first_errors), ("true", true_first_errors)):
        bad = next((i for i, t in enumerate(indices) if t < -1), None)
        if bad is not None:
            raise ValueError(f"process_bench_f1: {name} index of solution {bad} is {indices[bad]} (< -1)")
    pairs = list(zip(predicted_first_errors, true_first_errors, strict=True))
    erroneous = [pred == true for pred, true in pairs if true != -1]
    correct = [pred == -1 for pred, true in pairs if true == -1]
    if not erroneous or not correct:
        raise ValueError(
            f"process_bench_f1 needs solutions with and without errors, got {len(erroneous)} erroneous "
            f"and {len(correct)} error-free"
        )
    acc_erroneous, acc_correct = sum(erroneous) / len(erroneous), sum(correct) / len(correct)
    f1 = 0.0 if acc_erroneous == 0 or acc_correct == 0 else 2 / (1 / acc_erroneous + 1 / acc_correct)
    return {
        "acc_erroneous": acc_erroneous,
        "acc_correct": acc_correct,
        "f1": f1,
        "num_erroneous": len(erroneous),
        "num_correct": len(correct),
    }


def solution_score(values: Sequence[float], how: str = "min") -> float:
    """Whole-solution score from step values: ``min`` over steps or ``last`` step (Math-Shepherd),
    or ``prod`` (the product, reading each value as P(step is fine | previous steps are))."""
    if how not in SCORE_METHODS:
        raise ValueError(f"unknown score method {how!r}, expected one of {SCORE_METHODS}")
    if len(values) == 0:
        raise ValueError("solution_score of a solution with no steps")
    if how == "min":
        return float(min(values))
    if how == "last":
        return float(values[-1])
    return float(np.prod(values))


def best_of_n(
    groups_of_values: Sequence[Sequence[Sequence[float]]],
    groups_of_rewards: Sequence[Sequence[float]],
    how: str = "min",
) -> float:
    """Fraction of groups (prompts) where the solution with the highest critic score is correct.

    ``groups_of_values[g][i]`` are the step values of solution i of prompt g; ties go to the first.
    """
    if len(groups_of_values) != len(groups_of_rewards):
        raise ValueError(
            f"best_of_n: {len(groups_of_values)} value groups but {len(groups_of_rewards)} reward groups"
        )
    if not groups_of_values:
        raise ValueError("best_of_n of no groups")
    correct = 0
    for g, (solutions, rewards) in enumerate(zip(groups_of_values, groups_of_rewards, strict=True)):
        if len(solutions) != len(rewards) or not solutions:
            raise ValueError(
                f"best_of_n: group {g} has {len(solutions)} scored solutions and {len(rewards)} rewards"
            )
        empty = next((i for i, values in enumerate(solutions) if len(values) == 0), None)
        if empty is not None:
            raise ValueError(f"best_of_n: solution {empty} of group {g} has no step values")
        scores = [solution_score(values, how) for values in solutions]
        pick = max(range(len(scores)), key=scores.__getitem__)  # max keeps the first of equal scores
        correct += rewards[pick] > 0
    return correct / len(groups_of_values)


def random_pick_accuracy(groups_of_rewards: Sequence[Sequence[float]]) -> float:
    """Expected accuracy of picking one solution per group uniformly at random (the best-of-N floor):
    the fraction of correct solutions in each group, averaged over groups."""
    if not groups_of_rewards:
        raise ValueError("random_pick_accuracy of no groups")
    empty = next((g for g, rewards in enumerate(groups_of_rewards) if len(rewards) == 0), None)
    if empty is not None:
        raise ValueError(f"random_pick_accuracy: group {empty} has no solutions")
    return sum(sum(r > 0 for r in rewards) / len(rewards) for rewards in groups_of_rewards) / len(
        groups_of_rewards
    )
