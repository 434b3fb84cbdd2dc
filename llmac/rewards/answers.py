"""Final answers: find the span that holds a text's final answer, then judge it with math-verify.

:func:`extract_final_answer` finds the span by plain string search; the last marker in the text wins:
``\\boxed{...}``, ``#### N``, ``... answer is N``, a line starting ``A: N`` (GSM8K model solutions) or
``Answer: N`` / ``Final Answer: N`` (the arithmetic task). A completion without any marker has no
answer: a bare number somewhere in the text does not count, so a policy cannot earn reward by
scattering numbers. math-verify then turns the span and the gold into sympy objects and compares them.

Nothing here bounds its running time (sympy can run for ever on some inputs): call :func:`judge` and
:func:`vote_key` through a :class:`~llmac.rewards.verifier.Verifier`. math-verify is imported on
first use so that importing this module stays cheap for the verifier's worker.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from functools import cache, lru_cache

from llmac.config import option

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"\banswer\s+is\b\s*:?", re.IGNORECASE)
_ANSWER_LINE = re.compile(
    r"^[ \t>*#_]*(?:final[ \t]+)?answer[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE
)
_A_LINE = re.compile(r"^[ \t>*_]*A[ \t]*:", re.MULTILINE)
_HASHES = "####"
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


# ---------------------------------------------------------------------------------------------------
# Locating the final answer (string search only; math-verify does the reading)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FinalAnswer:
    """The span of a text that holds its final answer."""

    text: str = option(help="The answer as written (for \\boxed: the content of the braces).")
    latex: bool = option(help="True when the span is LaTeX as a whole (\\boxed content).")


def extract_final_answer(text: str) -> FinalAnswer | None:
    """The final-answer span of ``text`` (after its last answer marker), or None when it has none.

    A line marker's span runs to the end of its line (to the next non-empty line if the marker ends
    its line) and stops at the first sentence end, so "The answer is 18. Then ..." gives "18".
    """
    candidates: list[tuple[int, FinalAnswer]] = []
    if (boxed := _last_match(_BOXED, text)) is not None:
        content = _balanced_content(text, boxed.end())
        # An unclosed \boxed{ (a truncated completion) is no answer; an earlier marker may still be one.
        if content is not None:
            candidates.append((boxed.start(), FinalAnswer(content.strip(), latex=True)))
    if (pos := text.rfind(_HASHES)) != -1:
        candidates.append((pos, _line_span(text, pos + len(_HASHES))))
    for pattern in (_ANSWER_IS, _ANSWER_LINE, _A_LINE):
        if (match := _last_match(pattern, text)) is not None:
            candidates.append((match.start(), _line_span(text, match.end())))
    if not candidates:
        return None
    answer = max(candidates, key=lambda c: c[0])[1]
    return answer if answer.text else None


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def _balanced_content(text: str, start: int) -> str | None:
    """The text from ``start`` up to the brace that closes the one just before it; None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        char = text[i]
        if char == "{" and text[i - 1] != "\\":
            depth += 1
        elif char == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _line_span(text: str, start: int) -> FinalAnswer:
    rest = text[start:].lstrip()
    line = rest.split("\n", 1)[0]
    if (end := _SENTENCE_END.search(line)) is not None:
        line = line[: end.start() + 1]
    return FinalAnswer(line.strip().strip("*").strip(), latex=False)  # "**Answer:** 42**" markdown


# ---------------------------------------------------------------------------------------------------
# Reading and judging with math-verify (no timeout: see the module docstring)
# ---------------------------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """What became of one (completion, gold) pair. Only CORRECT scores 1.0."""

    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    UNPARSABLE_ANSWER = "unparsable_answer"
    UNPARSABLE_GOLD = "unparsable_gold"
    ERROR = "error"
    TIMEOUT = "timeout"
    PAST_DEADLINE = "past_deadline"  # not judged before its batch's deadline


@cache
def load_math_verify():
    """math-verify, imported on first use, without its notice that its own timeout is off."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_drop_disabled_timeout_notice)
    return math_verify


def _drop_disabled_timeout_notice(record: logging.LogRecord) -> bool:
    """Log filter: math-verify warns once that its timeout is off; llmac enforces the timeout itself."""
    return not str(record.msg).startswith("Timeout is disabled")


def _parse(text: str, latex: bool) -> list:
    """math-verify's reading of an answer span: a list whose first items are sympy objects, if any.

    A LaTeX span is wrapped in ``\\boxed{}`` so that math-verify reads it whole ("x^2+1" must not
    become the plain number 3); a text span may mix prose, numbers and inline LaTeX.
    """
    mv = load_math_verify()
    if latex and not any(delim in text for delim in ("$", "\\(", "\\[")):
        return mv.parse(
            "\\boxed{" + text + "}", [mv.LatexExtractionConfig()], parsing_timeout=None, raise_on_error=True
        )
    config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    return mv.parse(text, config, parsing_timeout=None, raise_on_error=True)


@lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> tuple | None:
    """The parsed gold, or None if math-verify reads no mathematical object from it.

    A gold may be a bare answer ("72", "1,000", "-4", "\\frac{1}{2}"), read as LaTeX as a whole, or
    a text with a marker ("... #### 72", "\\boxed{...}"), read like a completion. Golds repeat across
    samples of one prompt, hence the cache.
    """
    span = extract_final_answer(answer) or FinalAnswer(answer.strip(), latex=True)
    if not span.text:
        return None
    parsed = _parse(span.text, span.latex)
    from sympy import Basic, MatrixBase

    return tuple(parsed) if any(isinstance(item, Basic | MatrixBase) for item in parsed) else None


def judge(completion: str, answer: str) -> tuple[Outcome, str]:
    """Judge one pair without any timeout; returns the outcome and a short detail (for logs).

    Never raises an ``Exception``: math-verify's errors become ``Outcome.ERROR``.
    """
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(completion, str) or not isinstance(answer, str):
        return Outcome.ERROR, f"expected strings, got {type(completion).__name__} and {type(answer).__name__}"
    try:
        gold = _parse_gold(answer)
        if gold is None:
            return Outcome.UNPARSABLE_GOLD, ""
        span = extract_final_answer(completion)
        if span is None:
            return Outcome.NO_ANSWER, ""
        return _judge_span(gold, span)
    except Exception as exc:  # any failure of the checker scores 0.0, never the job
        # Only the type: str() of a sympy error can itself be huge or slow.
        return Outcome.ERROR, type(exc).__name__


@lru_cache(maxsize=65536)
def _judge_span(gold: tuple, span: FinalAnswer) -> tuple[Outcome, str]:
    """The outcome of an answer span against a parsed gold. Samples of one prompt (and MC continuations
    of one prefix) mostly end with the same few answers, hence the cache; errors are not cached."""
    parsed = _parse(span.text, span.latex)
    if not parsed:
        return Outcome.UNPARSABLE_ANSWER, span.text[:100]
    ok = load_math_verify().verify(list(gold), parsed, timeout_seconds=None, raise_on_error=True)
    return (Outcome.CORRECT if ok else Outcome.WRONG), ""


def vote_key(completion: str) -> str | None:
    """The final answer of ``completion`` in a canonical form for majority voting, None if it has none.

    Integers key as themselves; other numbers as a float, so "0.5", "1/2" and "0.50" vote together;
    other expressions key by math-verify's reading of them. No timeout: see
    :func:`llmac.rewards.answer_key`.
    """
    if not isinstance(completion, str) or (span := extract_final_answer(completion)) is None:
        return None
    try:
        parsed = _parse(span.text, span.latex)
    except Exception:  # a key is best effort: fall back to the span's text
        return span.text
    from sympy import Integer, Number

    for item in parsed:
        if isinstance(item, Integer):
            return str(item)
        if isinstance(item, Number):  # a Float or Rational
            value = float(item)
            return str(int(value)) if value.is_integer() else format(value, ".10g")
    return str(parsed[-1]) if parsed else span.text
