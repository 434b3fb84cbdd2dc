"""Critique SFT data: critiques of the actor's own arithmetic solutions, written from the exact oracle.

Input: the actor's rollouts (:mod:`llmac.rollouts` columns ``question``, ``answer``, ``completion``).
Each solution is judged by :func:`llmac.critique.oracle.judge_solution` (the first wrong step marked)
and its critique rendered in a :class:`~llmac.critique.format.CritiqueFormat`.

Columns of a critique dataset (one row per critiqued solution):

- ``question``: the critique request (the format's prompt for the problem and solution), and
  ``solution``: the critique, so ``llmac sft`` (which reads ``question``/``solution``) trains on it;
- ``answer``: the critique's final verdict, ``Correct`` or ``Wrong``;
- ``problem``, ``problem_answer``, ``actor_solution``: what was critiqued;
- ``step_labels`` (1 = step right), ``first_error`` (-1 if none), ``answer_correct``: the oracle's labels.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from llmac.config import option
from llmac.critique.format import get_critique_format
from llmac.critique.oracle import judge_solution
from llmac.data.loading import DataError
from llmac.validation import check_fields

CRITIQUE_COLUMNS = (
    "question",
    "solution",
    "answer",
    "problem",
    "problem_answer",
    "actor_solution",
    "step_labels",
    "first_error",
    "answer_correct",
)


@dataclass
class CritiqueDataConfig:
    """How critique SFT data is synthesized from the actor's solutions."""

    critique_format: str = option(
        "compact", "Critique layout: 'compact' (tiny CPU model) or 'verbose' (the paper's, real models)."
    )
    deduplicate: bool = option(True, "Critique each distinct (problem, solution) pair once.")
    balance: bool = option(
        False,
        "Keep as many solutions with a right final answer as with a wrong one (the larger side is "
        "subsampled with `seed`), so the critic does not learn to always say one verdict.",
    )
    seed: int = option(0, "Seed of the balancing subsample.", range="[0, inf)")

    def __post_init__(self) -> None:
        check_fields(self)
        get_critique_format(self.critique_format)  # a ConfigError naming the known formats


def critique_rows(
    problems: Sequence[str], golds: Sequence[str], solutions: Sequence[str], critique_format: str
) -> dict[str, list]:
    """The columns of :data:`CRITIQUE_COLUMNS` for each (problem, gold answer, actor solution)."""
    fmt = get_critique_format(critique_format)
    rows: dict[str, list] = {column: [] for column in CRITIQUE_COLUMNS}
    for problem, gold, solution in zip(problems, golds, solutions, strict=True):
        judged = judge_solution(problem, solution, gold)
        rows["question"].append(fmt.prompt(problem, judged.steps))
        rows["solution"].append(fmt.render(judged.judgements(), judged.answer_correct))
        rows["answer"].append("Correct" if judged.answer_correct else "Wrong")
        rows["problem"].append(problem)
        rows["problem_answer"].append(gold)
        rows["actor_solution"].append(solution)
        rows["step_labels"].append([int(ok) for ok in judged.step_correct])
        rows["first_error"].append(judged.first_error)
        rows["answer_correct"].append(judged.answer_correct)
    return rows


def balanced(indices: list[int], correct: Sequence[bool], seed: int) -> list[int]:
    """``indices`` with the larger verdict side subsampled to the size of the smaller, order kept."""
    right = [i for i in indices if correct[i]]
    wrong = [i for i in indices if not correct[i]]
    keep = min(len(right), len(wrong))
    rng = random.Random(seed)
    chosen = set(rng.sample(right, keep)) | set(rng.sample(wrong, keep))
    return [i for i in indices if i in chosen]


def critique_sft_dataset(rollouts: Dataset, config: CritiqueDataConfig | None = None) -> Dataset:
    """Critiques of every solution in ``rollouts`` (see the module docstring for the columns)."""
    config = config or CritiqueDataConfig()
    missing = [c for c in ("question", "answer", "completion") if c not in rollouts.column_names]
    if missing:
        raise DataError(
            f"critique data: the actor rollouts have no {missing} column(s); give a dataset written by "
            "llmac's rollouts (question, answer, completion)"
        )
    problems, golds, solutions = rollouts["question"], rollouts["answer"], rollouts["completion"]
    empty = next((i for i, s in enumerate(solutions) if not s or not s.strip()), None)
    if empty is not None:
        raise DataError(f"critique data: row {empty} of the actor rollouts has an empty 'completion'")
    indices = list(range(len(problems)))
    if config.deduplicate:
        first_of = {(problems[i], solutions[i]): i for i in reversed(indices)}
        indices = sorted(first_of.values())
    rows = critique_rows(
        [problems[i] for i in indices],
        [str(golds[i]) for i in indices],
        [solutions[i] for i in indices],
        config.critique_format,
    )
    dataset = Dataset.from_dict(rows)
    if config.balance:
        dataset = dataset.select(balanced(list(range(len(dataset))), rows["answer_correct"], config.seed))
    return dataset
