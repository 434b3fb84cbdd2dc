"""Step-critic metrics on hand-computed values."""

import itertools
import random

import pytest

from llmac.critic.metrics import (
    best_of_n,
    first_error_from_labels,
    first_error_index,
    process_bench_f1,
    random_pick_accuracy,
    roc_auc,
    solution_score,
    step_auc,
)
from llmac.evaluation import majority_at_k


def test_roc_auc_counts_ordered_pairs():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3/4
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert roc_auc([0.1, 0.2, 0.3], [0, 1, 1]) == 1.0
    assert roc_auc([0.1, 0.2, 0.3], [True, False, False]) == 0.0


def test_roc_auc_counts_ties_as_half():
    # positives 0.5, 0.9 vs negatives 0.5, 0.2: (0.5 tie 0.5) = 1/2, the other three pairs win -> 3.5/4
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert roc_auc([0.3] * 5, [0, 1, 0, 1, 1]) == pytest.approx(0.5)


def test_roc_auc_matches_pairwise_definition_with_many_ties():
    rng = random.Random(0)
    scores = [rng.randint(0, 5) / 5 for _ in range(60)]
    labels = [int(rng.random() < 0.3 + 0.5 * s) for s in scores]
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    pairwise = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert roc_auc(scores, labels) == pytest.approx(pairwise)


def test_roc_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([0.1, 0.9], [1, 1])
    with pytest.raises(ValueError, match="3 scores but 2 labels"):
        roc_auc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        roc_auc([0.1, 0.2], [0, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0.1, float("nan")], [0, 1])


def test_step_auc_pools_steps_and_thresholds_soft_labels():
    values = [[0.9, 0.3], [0.7, 0.25, 0.1]]
    labels = [[1.0, 0.0], [0.75, 0.5, 0.25]]
    # threshold 0.5: positives 0.9, 0.7, 0.25 (label exactly 0.5 counts) vs negatives 0.3, 0.1
    # -> 0.9 and 0.7 win both pairs, 0.25 beats only 0.1: 5/6
    assert step_auc(values, labels) == pytest.approx(5 / 6)
    # threshold 0.6: positives 0.9, 0.7 vs 0.3, 0.25, 0.1 -> perfectly separated
    assert step_auc(values, labels, threshold=0.6) == 1.0
    # hard labels give the same pooling
    assert step_auc(values, [[1, 0], [1, 1, 0]]) == pytest.approx(5 / 6)


def test_step_auc_names_the_mismatched_solution():
    with pytest.raises(ValueError, match="solution 1 has 2 step values but 3 labels"):
        step_auc([[0.9], [0.8, 0.1]], [[1.0], [1.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match="2 solutions with values but 1 with labels"):
        step_auc([[0.9], [0.8]], [[1.0]])


def test_first_error_index_uses_strict_threshold():
    assert first_error_index([0.9, 0.6, 0.4, 0.2]) == 2
    assert first_error_index([0.9, 0.6, 0.4, 0.2], threshold=0.7) == 1
    assert first_error_index([0.5, 0.5]) == -1  # 0.5 is not below 0.5
    assert first_error_index([]) == -1


def test_first_error_from_labels_takes_soft_or_hard_labels():
    assert first_error_from_labels([1.0, 0.5, 0.0, 0.25]) == 2  # a later recovery does not matter
    assert first_error_from_labels([1, 1, 0, 0]) == 2
    assert first_error_from_labels([0.25, 0.125]) == -1  # some completion still succeeds
    assert first_error_from_labels([]) == -1
    with pytest.raises(ValueError, match="step 1 is 1.5"):
        first_error_from_labels([1.0, 1.5])


def test_process_bench_f1_on_hand_computed_case():
    predicted = [2, -1, 1, -1, 0, 3]
    true = [2, 1, 1, -1, -1, -1]
    # erroneous (true != -1): solutions 0, 1, 2 -> hits at 0 and 2 -> 2/3
    # error-free: solutions 3, 4, 5 -> only 3 predicts -1 -> 1/3; f1 = 2*(2/3)(1/3) / (2/3 + 1/3) = 4/9
    result = process_bench_f1(predicted, true)
    assert result["acc_erroneous"] == pytest.approx(2 / 3)
    assert result["acc_correct"] == pytest.approx(1 / 3)
    assert result["f1"] == pytest.approx(4 / 9)
    assert (result["num_erroneous"], result["num_correct"]) == (3, 3)


def test_process_bench_f1_is_zero_when_one_side_is_zero():
    # a critic that never flags anything: perfect on error-free solutions, useless on the rest
    result = process_bench_f1([-1, -1, -1], [0, 2, -1])
    assert (result["acc_erroneous"], result["acc_correct"], result["f1"]) == (0.0, 1.0, 0.0)


def test_process_bench_f1_rejects_a_missing_class_and_bad_input():
    with pytest.raises(ValueError, match="0 erroneous and 2 error-free"):
        process_bench_f1([-1, 0], [-1, -1])
    with pytest.raises(ValueError, match="2 erroneous and 0 error-free"):
        process_bench_f1([1, 0], [1, 0])
    with pytest.raises(ValueError, match="2 predictions but 3 references"):
        process_bench_f1([1, -1], [1, -1, -1])
    with pytest.raises(ValueError, match="predicted index of solution 1 is -2"):
        process_bench_f1([1, -2], [1, -1])


def test_solution_score_methods():
    values = [0.9, 0.4, 0.8]
    assert solution_score(values) == pytest.approx(0.4)
    assert solution_score(values, "last") == pytest.approx(0.8)
    assert solution_score(values, "prod") == pytest.approx(0.288)
    with pytest.raises(ValueError, match="no steps"):
        solution_score([], "min")
    with pytest.raises(ValueError, match="unknown score method 'max'"):
        solution_score(values, "max")


GROUP_VALUES = [
    [[0.9, 0.2, 0.95], [0.6, 0.7], [0.5]],  # min picks 1 (wrong), last picks 0 (right), prod picks 2 (wrong)
    [[0.3], [0.8, 0.9], [0.8, 0.85]],  # min ties 1 and 2 -> first (right); last and prod pick 1
    [[0.4], [0.4]],  # every method ties -> first (wrong)
]
GROUP_REWARDS = [[1, 0, 0], [0, 1, 0], [0, 1]]


def test_best_of_n_picks_argmax_with_ties_to_first():
    assert best_of_n(GROUP_VALUES, GROUP_REWARDS, "min") == pytest.approx(1 / 3)
    assert best_of_n(GROUP_VALUES, GROUP_REWARDS, "last") == pytest.approx(2 / 3)
    assert best_of_n(GROUP_VALUES, GROUP_REWARDS, "prod") == pytest.approx(1 / 3)


def test_best_of_n_rejects_bad_groups():
    with pytest.raises(ValueError, match="group 1 has 2 scored solutions and 1 rewards"):
        best_of_n([[[0.5]], [[0.5], [0.6]]], [[1], [1]])
    with pytest.raises(ValueError, match="solution 1 of group 0 has no step values"):
        best_of_n([[[0.5], []]], [[1, 0]])
    with pytest.raises(ValueError, match="no groups"):
        best_of_n([], [])


def test_random_pick_accuracy_is_mean_fraction_correct():
    # (1/3 + 1/3 + 1/2) / 3
    assert random_pick_accuracy(GROUP_REWARDS) == pytest.approx(7 / 18)
    with pytest.raises(ValueError, match="group 1 has no solutions"):
        random_pick_accuracy([[1], []])


def test_critic_selection_beats_majority_when_the_crowd_is_wrong():
    # prompt 0: three samples agree on the wrong "7", the critic trusts only the lone right "5";
    # prompt 1: majority and critic both pick the right "3"
    rewards = [[0, 0, 1, 0], [1, 1, 0]]
    keys = [["7", "7", "5", "7"], ["3", "3", "4"]]
    values = [[[0.9, 0.3], [0.8, 0.2], [0.9, 0.85], [0.4]], [[0.9], [0.7], [0.6]]]
    assert majority_at_k(rewards, keys) == pytest.approx(1 / 2)
    assert best_of_n(values, rewards, "min") == 1.0
    assert random_pick_accuracy(rewards) == pytest.approx((1 / 4 + 2 / 3) / 2)
