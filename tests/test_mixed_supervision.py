"""The mixed-supervision task (some SFT solutions are only ``Answer: N``) and the direct-answer metric."""

import pytest
from datasets import Dataset

from llmac.data.arithmetic import solve_chain
from llmac.data.tasks import TaskConfig, load_task
from llmac.errors import ConfigError
from llmac.evaluation import direct_answer_share, is_direct_answer, metrics_from_rollouts


def _mixed(**overrides) -> TaskConfig:
    return TaskConfig(**{"task": "arithmetic_mixed", "num_train": 2000, "num_eval": 200, **overrides})


def _expression(question: str) -> str:
    return question.removesuffix(" =")


def test_rows_are_deterministic_for_a_seed():
    first, again = load_task(_mixed(), "train"), load_task(_mixed(), "train")
    assert first.to_dict() == again.to_dict()
    other = load_task(_mixed(task_seed=1), "train")
    assert len(set(first["question"]) & set(other["question"])) < 200  # another stretch of problems
    for split in ("rl", "eval"):
        assert load_task(_mixed(), split).to_dict() == load_task(_mixed(), split).to_dict()


@pytest.mark.parametrize("share", [0.0, 0.25, 0.6, 1.0])
def test_answer_only_share_is_honoured(share):
    solutions = load_task(_mixed(answer_only_share=share), "train")["solution"]
    answer_only = sum("\n" not in s for s in solutions) / len(solutions)
    # 2,000 Bernoulli draws: 4 standard deviations are at most 0.045
    assert answer_only == pytest.approx(share, abs=0.045)


def test_solutions_are_the_bare_answer_or_the_worked_steps():
    train = load_task(_mixed(), "train")
    worked = 0
    for question, answer, solution in zip(train["question"], train["answer"], train["solution"], strict=True):
        right = eval(_expression(question))  # noqa: S307 - trusted generated arithmetic
        assert answer == str(right)
        if solution.startswith("Answer:"):
            assert solution == f"Answer: {right}"
        else:
            assert solution.split("\n") == solve_chain(_expression(question))
            worked += 1
    assert worked > 0


def test_share_only_changes_which_solutions_are_bare():
    some, more = load_task(_mixed(answer_only_share=0.3), "train"), load_task(_mixed(), "train")
    assert some["question"] == more["question"]
    # one uniform draw per problem: bare at 0.3 means bare at 0.6
    bare = [s.startswith("Answer:") for s in some["solution"]]
    assert all(m.startswith("Answer:") for m, b in zip(more["solution"], bare, strict=True) if b)


@pytest.mark.parametrize("instruction", [False, True])
def test_rl_and_eval_rows_are_fresh_answer_only_problems(instruction):
    config = _mixed(instruction=instruction)
    train = set(load_task(config, "train")["question"])
    rl, held_out = load_task(config, "rl"), load_task(config, "eval")
    assert (len(rl), len(held_out)) == (2000, 200)
    for rows in (rl, held_out):
        assert rows.column_names == ["question", "answer"]
        assert not set(rows["question"]) & train
        expression = rows["question"][0].split(": ")[-1]
        assert rows["answer"][0] == str(eval(_expression(expression)))  # noqa: S307
    assert not set(rl["question"]) & set(held_out["question"])
    # disjoint across seeds too: held-out problems of one seed are never SFT or RL problems of another
    other = load_task(_mixed(instruction=instruction, task_seed=5), "eval")["question"]
    assert not set(other) & (train | set(rl["question"]))


def test_rl_split_of_other_tasks_drops_worked_steps():
    config = TaskConfig(num_train=50, num_eval=10)
    train, rl = load_task(config, "train"), load_task(config, "rl")
    assert "solution" in train.column_names and rl.column_names == ["question", "answer"]
    assert rl["question"] == train["question"]


def test_bad_share_and_unknown_task_are_refused():
    with pytest.raises(ConfigError, match="answer_only_share = 1.5"):
        _mixed(answer_only_share=1.5)
    with pytest.raises(ConfigError, match="'arithmetic_mixed'"):
        load_task(TaskConfig(task="arithmetic_mix"), "train")


def test_direct_answers_on_hand_built_completions():
    direct = ["Answer: 5", "  \nAnswer: -12\n"]
    worked = ["3 + 2 = 5\nAnswer: 5", "3 + 2 = 5 Answer: 5", "5", "", "Final Answer: 5"]
    assert all(map(is_direct_answer, direct))
    assert not any(map(is_direct_answer, worked))
    assert direct_answer_share(direct + worked) == pytest.approx(2 / 7)
    with pytest.raises(ValueError):
        direct_answer_share([])


def test_eval_metrics_report_the_direct_answer_share():
    rollouts = Dataset.from_dict({
        "prompt_index": [0, 0, 1, 1],
        "completion": ["Answer: 4", "1 + 3 = 4\nAnswer: 4", "Answer: 9", "Answer: 8"],
        "reward": [1.0, 1.0, 0.0, 1.0],
    })  # fmt: skip
    result = metrics_from_rollouts(rollouts, lambda completions: [c[-1] for c in completions])
    assert result.direct_answer_share == pytest.approx(3 / 4)
    assert result.pass_at_1 == pytest.approx(0.75)
    assert "direct=0.7500" in result.summary()
