"""Accuracy metrics on hand-computed values."""

import pytest

from llmac.evaluation import majority_at_k, pass_at_1, pass_at_k
from llmac.rollouts import group_rows


def test_pass_at_1_is_mean_of_per_prompt_means():
    # prompt 1: 1/4 correct, prompt 2: 4/4, prompt 3: 0/4 -> (0.25 + 1 + 0) / 3
    rewards = [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    assert pass_at_1(rewards) == pytest.approx(1.25 / 3)
    assert pass_at_k(rewards) == pytest.approx(2 / 3)


def test_majority_vote_picks_most_frequent_answer():
    rewards = [
        [0, 1, 0, 0],  # "7" wins 3-1 and is wrong
        [0, 1, 1, 0],  # "5" wins 2-1 (None does not vote) and is right
        [0, 0, 0, 0],  # nobody answers
        [1, 0, 0, 1],  # 2-2 tie: the answer seen first ("3") wins, right
    ]
    keys = [
        ["7", "8", "7", "7"],
        ["4", "5", "5", None],
        [None, None, None, None],
        ["3", "9", "9", "3"],
    ]
    assert majority_at_k(rewards, keys) == pytest.approx(2 / 4)


def test_metrics_reject_empty_and_mismatched_input():
    with pytest.raises(ValueError):
        pass_at_1([])
    with pytest.raises(ValueError):
        majority_at_k([[1]], [])


def test_group_rows_keeps_first_appearance_order():
    assert group_rows([3, 3, 1, 3, 1, 0]) == [[0, 1, 3], [2, 4], [5]]
