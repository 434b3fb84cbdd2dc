"""The exact step checker of the arithmetic task: the oracle behind synthesized critiques.

A chain-sum problem ``a op b op c ...`` has one right solution (:func:`llmac.data.solve_chain`): one
``x op y = z`` line per operation, then ``Answer: N``. The oracle judges each step of a solution:

- an operation step is right when it is the reference step at its position (numbers compared as
  integers, spacing ignored); a step that is not one ``x op y = z`` (two operations at once, text)
  is wrong;
- an ``Answer: N`` step is right when ``N`` is the gold answer, wherever it stands: answering without
  (some of) the work is not an error;
- after the first wrong step every step is wrong (labels mark whether the solution is still on the
  right path, as Math-Shepherd's hard labels do), so the first wrong step is the first error.

The final answer is judged on its own (the last ``Answer:``-style marker, as the rewards read it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from llmac.critique.format import StepJudgement
from llmac.data.arithmetic import solve_chain
from llmac.data.loading import DataError
from llmac.rewards.answers import extract_final_answer
from llmac.steps import clean_steps

_CHAIN = re.compile(r"-?\d+(?:\s*[+-]\s*\d+)+")
_OPERATION = re.compile(r"^(-?\d+)\s*([+-])\s*(\d+)\s*=\s*(-?\d+)$")
_ANSWER = re.compile(r"^Answer:\s*(-?\d+)$")


@dataclass(frozen=True)
class OracleJudgement:
    """The oracle's reading of one solution: its steps, the right version of each, the verdicts."""

    steps: tuple[str, ...]
    derivations: tuple[str, ...]
    step_correct: tuple[bool, ...]
    answer_correct: bool

    @property
    def first_error(self) -> int:
        """Index of the first wrong step, -1 when every step is right."""
        return next((t for t, ok in enumerate(self.step_correct) if not ok), -1)

    def judgements(self) -> list[StepJudgement]:
        """The per-step judgements a critique format renders."""
        return [
            StepJudgement(text, derivation, ok)
            for text, derivation, ok in zip(self.steps, self.derivations, self.step_correct, strict=True)
        ]


def chain_expression(question: str) -> str:
    """The chain-sum expression in ``question`` (its last one: an instruction may precede it)."""
    matches = _CHAIN.findall(question)
    if not matches:
        raise DataError(f"arithmetic oracle: no chain sum like '3 + 4 - 5' in the question {question[:80]!r}")
    return matches[-1]


def _normal_form(step: str) -> tuple | None:
    """A step as comparable integers: ``(x, op, y, z)``, ``("Answer", N)``, or None when it is neither."""
    step = step.strip()
    if match := _OPERATION.match(step):
        x, op, y, z = match.groups()
        return int(x), op, int(y), int(z)
    if match := _ANSWER.match(step):
        return "Answer", int(match.group(1))
    return None


def _same_number(text: str, gold: str) -> bool:
    """``text == gold`` as integers when both are, else as stripped strings."""
    try:
        return int(text) == int(gold)
    except ValueError:
        return text.strip() == gold.strip()


def answer_is_correct(solution: str, gold: str) -> bool:
    """Whether the final answer of ``solution`` (its last answer marker) equals ``gold``."""
    found = extract_final_answer(solution)
    return found is not None and _same_number(found.text, gold)


def exact_answer_rewards(completions: list[str], answers: list[str]) -> list[float]:
    """A batch reward (:data:`llmac.rewards.RewardFn`) for integer answers: 1.0 when
    :func:`answer_is_correct`, else 0.0; pure, so it needs no verifier worker."""
    return [float(answer_is_correct(c, a)) for c, a in zip(completions, answers, strict=True)]


def judge_solution(question: str, solution: str, gold: str | None = None) -> OracleJudgement:
    """The oracle's verdict on each step of ``solution`` (``"\\n"``-separated) to the chain-sum ``question``.

    ``gold`` defaults to the expression's value.
    """
    reference = solve_chain(chain_expression(question))
    operations, final = reference[:-1], reference[-1]
    gold = final.removeprefix("Answer: ") if gold is None else gold
    steps = clean_steps(solution)
    derivations: list[str] = []
    verdicts: list[bool] = []
    on_path = True
    for t, step in enumerate(steps):
        form = _normal_form(step)
        if form is not None and form[0] == "Answer":
            derivation = f"Answer: {gold}"
            right = _same_number(str(form[1]), gold)
        else:
            derivation = operations[t] if t < len(operations) else step
            right = t < len(operations) and form == _normal_form(operations[t])
        on_path = on_path and right
        derivations.append(derivation)
        verdicts.append(on_path)
    return OracleJudgement(
        tuple(steps), tuple(derivations), tuple(verdicts), answer_is_correct(solution, gold)
    )


def judge_solutions(
    questions: Sequence[str], solutions: Sequence[str], golds: Sequence[str]
) -> list[OracleJudgement]:
    """:func:`judge_solution` of many (question, solution, gold) triples."""
    return [judge_solution(q, s, g) for q, s, g in zip(questions, solutions, golds, strict=True)]
