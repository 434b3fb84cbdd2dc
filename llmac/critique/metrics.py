"""How good is a generative critic: discrimination, refinement gains, first-error F1, best-of-N (pure).

Conventions: correctness is a bool per solution (the oracle's or the verifier's); a critique's final
verdict is True ("Correct"), False ("Wrong") or None (missing, which is never a right verdict).
Rates of change are fractions of all problems, as in SCoRe and Critique-RL, so
``delta == i_to_c - c_to_i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmac.critic.metrics import process_bench_f1
from llmac.critique.format import CritiqueVerdicts
from llmac.evaluation import majority_at_k


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of correct solutions."""
    if not correct:
        raise ValueError("accuracy of no solutions")
    return sum(map(bool, correct)) / len(correct)


@dataclass(frozen=True)
class RefineMetrics:
    """Accuracy before and after refinement and how answers changed (rates over all problems)."""

    acc: float
    acc_refine: float
    delta: float
    c_to_i: float
    i_to_c: float
    num: int


def refine_metrics(original: Sequence[bool], refined: Sequence[bool]) -> RefineMetrics:
    """Acc, Acc after refinement, their difference, and the correct->incorrect / incorrect->correct rates."""
    if len(original) != len(refined):
        raise ValueError(f"refine_metrics: {len(original)} original answers but {len(refined)} refined ones")
    acc, acc_refine = accuracy(original), accuracy(refined)
    pairs = list(zip(map(bool, original), map(bool, refined), strict=True))
    return RefineMetrics(
        acc=acc,
        acc_refine=acc_refine,
        delta=acc_refine - acc,
        c_to_i=sum(o and not r for o, r in pairs) / len(pairs),
        i_to_c=sum(r and not o for o, r in pairs) / len(pairs),
        num=len(pairs),
    )


@dataclass(frozen=True)
class DiscriminationMetrics:
    """Acc@Dis: how often the final verdict matches the correctness, overall and on each side.

    A side with no solutions has ``None`` accuracy.
    """

    acc_dis: float
    acc_dis_correct: float | None
    acc_dis_wrong: float | None
    num_correct: int
    num_wrong: int
    num_missing_verdicts: int


def discrimination_metrics(verdicts: Sequence[bool | None], correct: Sequence[bool]) -> DiscriminationMetrics:
    """Acc@Dis of final ``verdicts`` against the solutions' ``correct``ness (missing verdicts count as misses)."""
    if len(verdicts) != len(correct):
        raise ValueError(f"discrimination_metrics: {len(verdicts)} verdicts but {len(correct)} solutions")
    if not verdicts:
        raise ValueError("discrimination_metrics of no solutions")
    hits = [v is not None and v == bool(c) for v, c in zip(verdicts, correct, strict=True)]
    on_right = [h for h, c in zip(hits, correct, strict=True) if c]
    on_wrong = [h for h, c in zip(hits, correct, strict=True) if not c]
    return DiscriminationMetrics(
        acc_dis=sum(hits) / len(hits),
        acc_dis_correct=sum(on_right) / len(on_right) if on_right else None,
        acc_dis_wrong=sum(on_wrong) / len(on_wrong) if on_wrong else None,
        num_correct=len(on_right),
        num_wrong=len(on_wrong),
        num_missing_verdicts=sum(v is None for v in verdicts),
    )


def first_error_f1(flagged: Sequence[int], first_errors: Sequence[int]) -> dict:
    """ProcessBench first-error scores of the critiques' first flagged steps against the oracle's first
    errors (-1 = none): ``acc_erroneous``, ``acc_correct`` and their harmonic mean ``f1``."""
    return process_bench_f1(flagged, first_errors)


def verdict_score(verdicts: CritiqueVerdicts) -> tuple[bool, float]:
    """How much a critique trusts a solution: its final verdict, then the share of steps it judges right."""
    share = sum(verdicts.steps) / len(verdicts.steps) if verdicts.steps else 0.0
    return verdicts.final_found and verdicts.final, share


def best_of_n_by_verdict(
    groups_of_verdicts: Sequence[Sequence[CritiqueVerdicts]],
    groups_of_correct: Sequence[Sequence[bool]],
    groups_of_tie_breaks: Sequence[Sequence[float]] | None = None,
) -> float:
    """Fraction of problems where the solution the critique trusts most (:func:`verdict_score`) is correct.

    Ties go to the highest ``groups_of_tie_breaks`` score (e.g. the sampler's confidence), else to the first.
    """
    _check_groups("best_of_n_by_verdict", groups_of_verdicts, groups_of_correct)
    if groups_of_tie_breaks is None:
        groups_of_tie_breaks = [[0.0] * len(group) for group in groups_of_verdicts]
    hits = 0
    for verdicts, correct, ties in zip(
        groups_of_verdicts, groups_of_correct, groups_of_tie_breaks, strict=True
    ):
        scores = [(*verdict_score(v), tie) for v, tie in zip(verdicts, ties, strict=True)]
        pick = max(range(len(scores)), key=scores.__getitem__)
        hits += bool(correct[pick])
    return hits / len(groups_of_verdicts)


def majority_of_accepted(
    groups_of_verdicts: Sequence[Sequence[CritiqueVerdicts]],
    groups_of_correct: Sequence[Sequence[bool]],
    groups_of_keys: Sequence[Sequence[str | None]],
) -> float:
    """Majority vote among the solutions whose critique says "Correct" (all of a problem's solutions
    vote when it accepts none); ``groups_of_keys`` are the answers' vote keys."""
    _check_groups("majority_of_accepted", groups_of_verdicts, groups_of_correct)
    if len(groups_of_keys) != len(groups_of_correct):
        raise ValueError(
            f"majority_of_accepted: {len(groups_of_keys)} key groups for {len(groups_of_correct)}"
        )
    voting_keys = []
    for verdicts, keys in zip(groups_of_verdicts, groups_of_keys, strict=True):
        accepted = [v.final_found and v.final for v in verdicts]
        voting_keys.append(
            [k if ok else None for k, ok in zip(keys, accepted, strict=True)] if any(accepted) else list(keys)
        )
    return majority_at_k([[float(c) for c in group] for group in groups_of_correct], voting_keys)


def _check_groups(
    name: str, groups_of_verdicts: Sequence[Sequence], groups_of_correct: Sequence[Sequence]
) -> None:
    if not groups_of_verdicts:
        raise ValueError(f"{name} of no problems")
    if len(groups_of_verdicts) != len(groups_of_correct):
        raise ValueError(
            f"{name}: {len(groups_of_verdicts)} verdict groups but {len(groups_of_correct)} correctness groups"
        )
    for g, (verdicts, correct) in enumerate(zip(groups_of_verdicts, groups_of_correct, strict=True)):
        if len(verdicts) != len(correct) or not verdicts:
            raise ValueError(
                f"{name}: problem {g} has {len(verdicts)} critiques and {len(correct)} solutions"
            )
