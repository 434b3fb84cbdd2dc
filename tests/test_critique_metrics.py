"""Critique metrics on hand-computed numbers."""

from __future__ import annotations

import pytest

from llmac.critique.format import CritiqueVerdicts
from llmac.critique.metrics import (
    accuracy,
    best_of_n_by_verdict,
    discrimination_metrics,
    first_error_f1,
    majority_of_accepted,
    refine_metrics,
)


def test_refine_metrics_rates_are_over_all_problems():
    original = [True, True, False, False, False]
    refined = [True, False, True, True, False]
    m = refine_metrics(original, refined)
    assert (m.acc, m.acc_refine) == (pytest.approx(0.4), pytest.approx(0.6))
    assert m.c_to_i == pytest.approx(0.2) and m.i_to_c == pytest.approx(0.4)
    assert m.delta == pytest.approx(0.2) == pytest.approx(m.i_to_c - m.c_to_i)
    assert m.num == 5
    with pytest.raises(ValueError, match="3 original answers but 2"):
        refine_metrics([True] * 3, [True] * 2)
    with pytest.raises(ValueError, match="no solutions"):
        accuracy([])


def test_acc_at_dis_overall_and_per_side_with_missing_verdicts():
    correct = [True, True, True, False, False]
    verdicts = [True, False, None, False, None]
    m = discrimination_metrics(verdicts, correct)
    assert m.acc_dis == pytest.approx(2 / 5)
    assert m.acc_dis_correct == pytest.approx(1 / 3) and m.acc_dis_wrong == pytest.approx(1 / 2)
    assert (m.num_correct, m.num_wrong, m.num_missing_verdicts) == (3, 2, 2)
    only_right = discrimination_metrics([True, True], [True, True])
    assert only_right.acc_dis_wrong is None and only_right.acc_dis_correct == 1.0


def test_first_error_f1():
    # erroneous: (1 vs 1) hit, (0 vs 2) miss -> 1/2; error-free: (-1) hit, (3) miss -> 1/2
    f1 = first_error_f1([1, 0, -1, 3], [1, 2, -1, -1])
    assert f1["acc_erroneous"] == 0.5 and f1["acc_correct"] == 0.5 and f1["f1"] == pytest.approx(0.5)


def _v(final, steps):
    return CritiqueVerdicts(tuple(map(bool, steps)), final, True, 0)


def test_best_of_n_by_verdict_prefers_accepted_then_more_right_steps():
    groups = [
        # rejected; accepted with 1/2 steps; accepted with 2/2 steps -> picks the third
        [_v(False, [1, 1]), _v(True, [1, 0]), _v(True, [1, 1])],
        # none accepted: the one with more steps judged right (ties: the first)
        [_v(False, [0, 0]), _v(False, [1, 0]), _v(False, [0, 1])],
        # tie: the first
        [_v(True, [1]), _v(True, [1])],
    ]
    correct = [[True, False, False], [False, True, False], [False, True]]
    assert best_of_n_by_verdict(groups, correct) == pytest.approx(1 / 3)
    correct[0][2] = True
    assert best_of_n_by_verdict(groups, correct) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="problem 0 has 3 critiques and 2 solutions"):
        best_of_n_by_verdict(groups[:1], [[True, False]])
    # a tie-break (the sampler's confidence) decides only among equal verdict scores: group 2 -> the
    # second (more confident); group 1's (False, 1/2) pair ties and the third's confidence wins it
    confidence = [[9.0, 9.0, 0.0], [0.0, 1.0, 2.0], [0.0, 1.0]]
    assert best_of_n_by_verdict(groups, correct, confidence) == pytest.approx(2 / 3)
    correct[1] = [False, False, True]
    assert best_of_n_by_verdict(groups, correct, confidence) == pytest.approx(1.0)


def test_majority_of_accepted_votes_among_accepted_solutions_only():
    accept, reject = _v(True, [1]), _v(False, [0])
    groups = [[reject, reject, accept], [reject, reject]]
    keys = [["5", "5", "7"], ["1", "2"]]
    correct = [[False, False, True], [True, False]]
    # problem 0: only "7" is accepted and it is right (plain majority would pick the wrong "5");
    # problem 1: nothing accepted, everyone votes, the tie goes to the first ("1", right)
    assert majority_of_accepted(groups, correct, keys) == 1.0
