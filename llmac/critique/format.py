"""Critique formats: how a generative critic writes its step verdicts, and how llmac reads them back.

A critique judges a solution step by step (steps as :func:`llmac.steps.clean_steps` splits them)
and ends with a verdict on the final answer. Two built-ins, by name (:func:`get_critique_format`):

- ``"verbose"``, the Critique-RL paper's layout, for real models::

      Step 1: 38 - 57 = -21
      Correctness of the step: Wrong
      Explanation: 38 - 57 = -19, not -21.

      Correctness of the final answer: Wrong

- ``"compact"``, for the character-level CPU model: one line per step, the critic's own derivation
  of the step then ``r`` (right) or ``w`` (wrong); a last line ``Answer: r|w`` on the final answer::

      38 - 57 = -19 w
      -19 + 10 = -9 w
      Answer: -9 w
      Answer: w

  It uses only characters of the arithmetic task's solutions, so the SFT'd actor's tokenizer
  encodes it and the critic can start from the actor's weights.

Parsing never raises on what a model wrote: a missing, unreadable or duplicated verdict is counted in
:attr:`CritiqueVerdicts.num_malformed`, and a missing verdict reads as ``Wrong``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from llmac.registry import Registry


@dataclass(frozen=True)
class StepJudgement:
    """What a critique says about one step: the step as written, the critic's derivation, the verdict."""

    text: str
    derivation: str
    correct: bool


@dataclass(frozen=True)
class CritiqueVerdicts:
    """What a parsed critique says.

    ``steps[t]`` is True when step t is judged correct (missing verdicts read as False); ``final`` is
    the verdict on the final answer (False when missing, see ``final_found``); ``num_malformed``
    counts verdicts that were missing, unreadable, duplicated or about steps the solution does not have.
    """

    steps: tuple[bool, ...]
    final: bool
    final_found: bool
    num_malformed: int

    @property
    def first_flagged(self) -> int:
        """Index of the first step judged wrong, -1 when every step is judged correct."""
        return next((t for t, ok in enumerate(self.steps) if not ok), -1)


class CritiqueFormat(ABC):
    """A way of writing critiques: the request to the critic, rendering and parsing."""

    name: str

    @abstractmethod
    def prompt(self, question: str, steps: Sequence[str]) -> str:
        """The text asking for a critique of the solution ``steps`` to ``question`` (before any chat template)."""

    @abstractmethod
    def render(self, judgements: Sequence[StepJudgement], final_correct: bool) -> str:
        """The critique text for the given step judgements and final verdict."""

    @abstractmethod
    def parse(self, critique: str, num_steps: int) -> CritiqueVerdicts:
        """The verdicts of ``critique`` on a solution of ``num_steps`` steps; never raises on its text."""

    #: The final verdict as written after :meth:`final_verdict_prefix`: (correct, wrong).
    verdict_words: tuple[str, str] | None = None

    def final_verdict_prefix(self, critique: str) -> str | None:
        """``critique`` up to its final verdict word (None without one, or for a format that cannot say):
        where the critic's next-token odds of the two :attr:`verdict_words` give a soft verdict."""
        return None


# ---------------------------------------------------------------------------------------------------
# verbose: the Critique-RL paper's layout
# ---------------------------------------------------------------------------------------------------

_VERDICT_WORDS = {"correct": True, "wrong": False}
_STEP_HEADER = re.compile(r"^[ \t*#]*Step\s+(\d+)\s*:", re.IGNORECASE | re.MULTILINE)
_STEP_VERDICT = re.compile(r"Correctness of the step\s*:\s*(\S*)", re.IGNORECASE)
_FINAL_VERDICT = re.compile(r"Correctness of the final answer\s*:\s*(\S*)", re.IGNORECASE)


def _verdict_word(token: str) -> bool | None:
    """True/False for ``Correct``/``Wrong`` (any case, markdown stars and a trailing period allowed)."""
    return _VERDICT_WORDS.get(token.strip("*.").lower())


class VerboseFormat(CritiqueFormat):
    """``Step k: ... / Correctness of the step: Correct|Wrong / Explanation: ...`` per step, then
    ``Correctness of the final answer: Correct|Wrong``."""

    name = "verbose"

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        numbered = "\n".join(f"Step {k}: {step}" for k, step in enumerate(steps, start=1))
        return (
            "Check the following solution step by step.\n\n"
            f"Question: {question}\n\nSolution:\n{numbered}\n\n"
            "For each step write 'Step k: <the step>', then 'Correctness of the step: Correct' or "
            "'Correctness of the step: Wrong', then 'Explanation: <why>'. End with "
            "'Correctness of the final answer: Correct' or 'Correctness of the final answer: Wrong'."
        )

    def render(self, judgements: Sequence[StepJudgement], final_correct: bool) -> str:
        blocks = []
        for k, judged in enumerate(judgements, start=1):
            if judged.correct:
                why = f"Recomputing it gives {judged.derivation}, as written."
            else:
                why = f"It should read {judged.derivation}."
            verdict = "Correct" if judged.correct else "Wrong"
            blocks.append(f"Step {k}: {judged.text}\nCorrectness of the step: {verdict}\nExplanation: {why}")
        blocks.append(f"Correctness of the final answer: {'Correct' if final_correct else 'Wrong'}")
        return "\n\n".join(blocks)

    verdict_words = (" Correct", " Wrong")

    def final_verdict_prefix(self, critique: str) -> str | None:
        matches = list(_FINAL_VERDICT.finditer(critique))
        if not matches or _verdict_word(matches[-1].group(1)) is None:
            return None
        return critique[: matches[-1].start(1)].rstrip()

    def parse(self, critique: str, num_steps: int) -> CritiqueVerdicts:
        final_matches = list(_FINAL_VERDICT.finditer(critique))
        body_end = final_matches[-1].start() if final_matches else len(critique)
        found: dict[int, bool] = {}
        malformed = 0
        headers = list(_STEP_HEADER.finditer(critique, 0, body_end))
        for i, header in enumerate(headers):
            block_end = headers[i + 1].start() if i + 1 < len(headers) else body_end
            index = int(header.group(1)) - 1
            match = _STEP_VERDICT.search(critique, header.end(), block_end)
            verdict = _verdict_word(match.group(1)) if match else None
            if index in found or not 0 <= index < num_steps:
                malformed += 1  # a second verdict on a step, or one on a step the solution lacks
            elif verdict is not None:
                found[index] = verdict  # an unreadable verdict stays missing, and is counted as such
        final = _verdict_word(final_matches[-1].group(1)) if final_matches else None
        return _verdicts(found, num_steps, final, malformed)


def _verdicts(found: dict[int, bool], num_steps: int, final: bool | None, malformed: int) -> CritiqueVerdicts:
    """Fill missing or unreadable step verdicts (and final verdict) with Wrong, counting each once."""
    missing = num_steps - len(found)
    return CritiqueVerdicts(
        steps=tuple(found.get(t, False) for t in range(num_steps)),
        final=bool(final),
        final_found=final is not None,
        num_malformed=malformed + missing + (final is None),
    )


# ---------------------------------------------------------------------------------------------------
# compact: one short line per step, for the character-level CPU model
# ---------------------------------------------------------------------------------------------------

_COMPACT_MARKS = {"r": True, "w": False}
_COMPACT_FINAL = re.compile(r"^\s*Answer:\s*([rw])\s*$")
_COMPACT_FINAL_AT_END = re.compile(r"(?:^|\n)[ \t]*(Answer:)[ \t]*[rw]\s*$")


class CompactFormat(CritiqueFormat):
    """``<derivation> r|w`` per step, then ``Answer: r|w``; the prompt is the question, the solution
    and a blank line."""

    name = "compact"

    def prompt(self, question: str, steps: Sequence[str]) -> str:
        return f"{question}\n" + "\n".join(steps) + "\n\n"

    def render(self, judgements: Sequence[StepJudgement], final_correct: bool) -> str:
        lines = [f"{j.derivation} {'r' if j.correct else 'w'}" for j in judgements]
        lines.append(f"Answer: {'r' if final_correct else 'w'}")
        return "\n".join(lines)

    verdict_words = (" r", " w")

    def final_verdict_prefix(self, critique: str) -> str | None:
        match = _COMPACT_FINAL_AT_END.search(critique)
        return critique[: match.end(1)] if match else None

    def parse(self, critique: str, num_steps: int) -> CritiqueVerdicts:
        lines = [line for line in critique.splitlines() if line.strip()]
        final = None
        # The format ends with the final verdict; without one (a truncated critique) every line is a step.
        if lines and (match := _COMPACT_FINAL.match(lines[-1])):
            final = _COMPACT_MARKS[match.group(1)]
            lines = lines[:-1]
        found: dict[int, bool] = {}
        malformed = 0
        for index, line in enumerate(lines):
            verdict = _COMPACT_MARKS.get(line.split()[-1])
            if index >= num_steps:
                malformed += 1  # a line about a step the solution lacks
            elif verdict is not None:
                found[index] = verdict
        return _verdicts(found, num_steps, final, malformed)


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

_FORMATS: Registry[CritiqueFormat] = Registry("critique format")
critique_format_names = _FORMATS.names
get_critique_format = _FORMATS.get


def register_critique_format(critique_format: CritiqueFormat) -> CritiqueFormat:
    """Make ``critique_format`` available to :func:`get_critique_format` under its ``name``."""
    return _FORMATS.add(critique_format.name, critique_format)


register_critique_format(VerboseFormat())
register_critique_format(CompactFormat())
