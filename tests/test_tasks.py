"""The arithmetic task: solutions are correct step by step; held-out problems are unseen in training."""

import pytest

from llmac.data.arithmetic import solve_chain
from llmac.data.tasks import TaskConfig, load_task
from llmac.steps import clean_steps


def test_solve_chain_by_hand():
    assert solve_chain("38 - 57 + 10") == ["38 - 57 = -19", "-19 + 10 = -9", "Answer: -9"]
    assert solve_chain("5 + 9 + 7") == ["5 + 9 = 14", "14 + 7 = 21", "Answer: 21"]


def test_arithmetic_rows_are_consistent():
    config = TaskConfig(num_train=300, num_eval=50, task_seed=3)
    train = load_task(config, "train")
    assert len(train) == 300
    for question, answer, solution in zip(train["question"], train["answer"], train["solution"], strict=True):
        steps = clean_steps(solution)
        terms = question.rstrip(" =").split(" ")
        assert len(steps) == (len(terms) - 1) // 2 + 1  # one step per operation, then the answer
        assert steps[-1] == f"Answer: {answer}"
        assert eval(question.rstrip(" =")) == int(answer)  # noqa: S307 - trusted generated arithmetic


def test_held_out_problems_never_appear_in_training():
    config = TaskConfig(num_train=2000, num_eval=300, task_seed=0, max_terms=3, max_digits=1)
    train = set(load_task(config, "train")["question"])
    held_out = load_task(config, "eval")
    assert len(held_out) == 300
    assert not train & set(held_out["question"])


def test_same_seed_same_problems():
    config = TaskConfig(num_train=50, num_eval=10)
    assert load_task(config, "train")["question"] == load_task(config, "train")["question"]
    with pytest.raises(ValueError, match="split"):
        load_task(config, "test")
