"""The arithmetic oracle and the critique SFT data it writes, on hand-computed cases."""

from __future__ import annotations

import pytest
from datasets import Dataset

from llmac.critique.data import CRITIQUE_COLUMNS, CritiqueDataConfig, critique_sft_dataset
from llmac.critique.format import get_critique_format
from llmac.critique.oracle import answer_is_correct, chain_expression, exact_answer_rewards, judge_solution
from llmac.data import arithmetic_dataset
from llmac.data.loading import DataError
from llmac.errors import ConfigError

QUESTION = "38 - 57 + 10 ="  # 38 - 57 = -19, -19 + 10 = -9
RIGHT = "38 - 57 = -19\n-19 + 10 = -9\nAnswer: -9"
SLIP = "38 - 57 = -21\n-21 + 10 = -11\nAnswer: -11"  # first step wrong, later arithmetic fine
LATE = "38 - 57 = -19\n-19 + 10 = -8\nAnswer: -8"  # second step wrong


def test_chain_expression_skips_an_instruction():
    assert chain_expression("Compute 1 step: 38 - 57 + 10 =") == "38 - 57 + 10"
    with pytest.raises(DataError, match="no chain sum"):
        chain_expression("what is the answer?")


def test_right_solution_has_every_step_right():
    judged = judge_solution(QUESTION, RIGHT)
    assert judged.step_correct == (True, True, True)
    assert judged.answer_correct and judged.first_error == -1


@pytest.mark.parametrize(
    ("solution", "labels", "first"), [(SLIP, (False, False, False), 0), (LATE, (True, False, False), 1)]
)
def test_first_wrong_step_and_everything_after_it_is_wrong(solution, labels, first):
    judged = judge_solution(QUESTION, solution)
    assert judged.step_correct == labels and judged.first_error == first
    assert not judged.answer_correct
    # the derivations are the right path, whatever the actor wrote
    assert judged.derivations == ("38 - 57 = -19", "-19 + 10 = -9", "Answer: -9")


def test_a_step_back_on_the_path_after_an_error_is_still_wrong():
    # the second step matches the reference, but the solution already left the right path
    judged = judge_solution(QUESTION, "38 - 57 = -21\n-19 + 10 = -9\nAnswer: -9")
    assert judged.step_correct == (False, False, False) and judged.answer_correct


def test_spacing_is_ignored_and_a_bare_answer_is_not_an_error():
    assert judge_solution(QUESTION, "38-57=-19\n -19 +10= -9\nAnswer:-9").step_correct == (True, True, True)
    judged = judge_solution(QUESTION, "Answer: -9")
    assert judged.step_correct == (True,) and judged.answer_correct
    assert judge_solution(QUESTION, "Answer: 9").step_correct == (False,)


def test_combined_extra_and_garbled_steps_are_wrong():
    # two operations in one line: not the reference step at position 0
    assert judge_solution(QUESTION, "38 - 57 + 10 = -9\nAnswer: -9").step_correct == (False, False)
    # right steps, then an extra operation before the (right) answer
    judged = judge_solution(QUESTION, RIGHT.replace("Answer", "-9 + 0 = -9\nAnswer"))
    assert judged.step_correct == (True, True, False, False)
    assert judged.derivations[2] == "-9 + 0 = -9"  # no reference step there: the step as written
    assert judged.answer_correct  # the final answer is judged on its own
    assert judge_solution(QUESTION, "38 - 5").step_correct == (False,)


def test_gold_overrides_the_expression_value_and_answers_compare_as_integers():
    assert judge_solution(QUESTION, "Answer: 4", gold="4").step_correct == (True,)
    assert answer_is_correct("x\nAnswer: -09", "-9")
    assert not answer_is_correct("no marker -9", "-9")


def _rollouts(solutions):
    return Dataset.from_dict(
        {"question": [QUESTION] * len(solutions), "answer": ["-9"] * len(solutions), "completion": solutions}
    )


def test_sft_rows_compact():
    data = critique_sft_dataset(_rollouts([RIGHT, LATE, RIGHT]))
    assert data.column_names == list(CRITIQUE_COLUMNS)
    assert len(data) == 2  # the repeated solution is critiqued once
    wrong = data[1]
    assert wrong["question"] == f"{QUESTION}\n{LATE}\n\n"
    assert wrong["solution"] == "38 - 57 = -19 r\n-19 + 10 = -9 w\nAnswer: -9 w\nAnswer: w"
    assert (wrong["answer"], wrong["first_error"], wrong["step_labels"]) == ("Wrong", 1, [1, 0, 0])
    assert (wrong["problem"], wrong["problem_answer"], wrong["actor_solution"]) == (QUESTION, "-9", LATE)
    assert data[0]["solution"].endswith("Answer: -9 r\nAnswer: r") and data[0]["answer_correct"]


def test_sft_rows_parse_back_to_the_oracle_labels():
    for name in ("compact", "verbose"):
        data = critique_sft_dataset(_rollouts([RIGHT, SLIP, LATE]), CritiqueDataConfig(critique_format=name))
        fmt = get_critique_format(name)
        for row in data:
            parsed = fmt.parse(row["solution"], len(row["step_labels"]))
            assert [int(v) for v in parsed.steps] == row["step_labels"]
            assert parsed.final == row["answer_correct"] and parsed.num_malformed == 0


def test_balance_keeps_equal_verdicts():
    data = critique_sft_dataset(
        _rollouts([RIGHT, SLIP, LATE, "Answer: -9", "Answer: 1"]), CritiqueDataConfig(balance=True, seed=3)
    )
    assert sorted(data["answer_correct"]) == [False, False, True, True]


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown critique format"):
        CritiqueDataConfig(critique_format="long")
    with pytest.raises(DataError, match="no \\['completion'\\] column"):
        critique_sft_dataset(Dataset.from_dict({"question": [QUESTION], "answer": ["-9"]}))
    with pytest.raises(DataError, match="row 1 .* empty 'completion'"):
        critique_sft_dataset(_rollouts([RIGHT, "  "]))


@pytest.fixture(scope="module")
def task_rows():
    return arithmetic_dataset(40, seed=5)


def _slipped(question: str, solution: str) -> str:
    """``solution`` with one operation step's result replaced by 1000."""
    steps = solution.splitlines()
    t = len(question) % (len(steps) - 1)  # an operation step, picked without randomness
    steps[t] = steps[t][: steps[t].rindex("=") + 1] + " 1000"
    return "\n".join(steps)


def test_reference_solutions_pass_and_one_slip_is_found_where_it_is(task_rows):
    rows = task_rows
    for question, gold, solution in zip(rows["question"], rows["answer"], rows["solution"], strict=True):
        assert judge_solution(question, solution, gold).step_correct == (True,) * len(solution.splitlines())
        judged = judge_solution(question, _slipped(question, solution), gold)
        assert (
            judged.first_error == len(question) % (len(solution.splitlines()) - 1) and judged.answer_correct
        )
    assert exact_answer_rewards(["Answer: 3", "Answer: 4", "3"], ["3", "3", "3"]) == [1.0, 0.0, 0.0]


def test_compact_critiques_use_only_the_task_alphabet(task_rows):
    """The tiny actor's tokenizer knows only the characters of the task's questions and solutions: the
    compact critic must need no other, so it can start from the SFT'd actor."""
    questions, answers, solutions = (list(task_rows[c]) for c in ("question", "answer", "solution"))
    alphabet = set("".join(questions) + "".join(solutions))
    slipped = [_slipped(q, s) for q, s in zip(questions, solutions, strict=True)]
    rollouts = Dataset.from_dict(
        {"question": questions * 2, "answer": answers * 2, "completion": solutions + slipped}
    )
    data = critique_sft_dataset(rollouts)
    assert set(data["answer"]) == {"Correct"}  # a slip whose later steps are right keeps the answer right
    assert sum(label == 0 for labels in data["step_labels"] for label in labels) > 0
    used = set("".join(data["question"]) + "".join(data["solution"]))
    assert used <= alphabet, sorted(used - alphabet)
