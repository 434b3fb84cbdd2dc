"""Multi-step arithmetic: the task a tiny model learns on CPU and whose mistakes are step mistakes.

Problems come from reasoning-gym's ``chain_sum``; llmac writes their reference solutions one
operation per line, then ``Answer: N``::

    38 - 57 = -19
    -19 + 10 = -9
    Answer: -9

Mixed supervision (:func:`mixed_supervision_dataset`) is the same problems as real post-training data
looks: only some SFT solutions show their steps, the rest are the bare ``Answer: N``; RL and held-out
problems are fresh ones with the final answer only.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from datasets import Dataset

from llmac.config import option
from llmac.errors import ConfigError
from llmac.validation import check_fields, require

_TERM = re.compile(r"\s*([+-])\s*(\d+)")


@dataclass
class ArithmeticTaskConfig:
    """Difficulty and size of the chain-sum task."""

    min_terms: int = option(3, "Fewest numbers in a problem.", range="[1, inf)")
    max_terms: int = option(5, "Most numbers in a problem.", range="[1, inf)")
    min_digits: int = option(1, "Fewest digits per number.", range="[1, inf)")
    max_digits: int = option(2, "Most digits per number.", range="[1, inf)")
    instruction: bool = option(
        False,
        "Keep reasoning-gym's English instruction in the question (for real models); "
        "off, the question is the bare expression (for the character-level tiny model).",
    )
    answer_only_share: float = option(
        0.6,
        "task=arithmetic_mixed: share of SFT problems whose solution is only 'Answer: N' "
        "(the others show their worked steps); chosen per problem from task_seed.",
        range="[0, 1]",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(
            self,
            self.min_terms <= self.max_terms,
            f"min_terms ({self.min_terms}) > max_terms ({self.max_terms})",
        )
        require(
            self,
            self.min_digits <= self.max_digits,
            f"min_digits ({self.min_digits}) > max_digits ({self.max_digits})",
        )


def solve_chain(expression: str) -> list[str]:
    """The step-by-step solution of ``"a op b op c ..."``: one ``x op y = z`` line per operation."""
    first, rest = re.match(r"\s*(-?\d+)(.*)$", expression).groups()
    total = int(first)
    steps = []
    for op, number in _TERM.findall(rest):
        value = total + int(number) if op == "+" else total - int(number)
        steps.append(f"{total} {op} {number} = {value}")
        total = value
    steps.append(f"Answer: {total}")
    return steps


def _chain_sums(seed: int, config: ArithmeticTaskConfig, size: int) -> Iterator[tuple[str, str, str, str]]:
    """``(expression, question, answer, solution)`` of reasoning-gym's chain-sum items ``0..size-1``."""
    import reasoning_gym

    source = reasoning_gym.create_dataset(
        "chain_sum",
        size=size,
        seed=seed,
        min_terms=config.min_terms,
        max_terms=config.max_terms,
        min_digits=config.min_digits,
        max_digits=config.max_digits,
    )
    for index in range(size):
        item = source[index]
        expression = item["metadata"]["expression"]
        steps = solve_chain(expression)
        if steps[-1] != f"Answer: {item['answer']}":
            raise AssertionError(f"chain_sum item {index}: {steps[-1]} != {item['answer']}")
        question = item["question"] if config.instruction else f"{expression} ="
        yield expression, question, str(item["answer"]), "\n".join(steps)


def arithmetic_dataset(size: int, seed: int, config: ArithmeticTaskConfig | None = None) -> Dataset:
    """``size`` chain-sum problems with ``question``, ``answer`` and step-by-step ``solution`` columns."""
    rows = {"question": [], "answer": [], "solution": []}
    for _, question, answer, solution in _chain_sums(seed, config or ArithmeticTaskConfig(), size):
        rows["question"].append(question)
        rows["answer"].append(answer)
        rows["solution"].append(solution)
    return Dataset.from_dict(rows)


# A problem's split is fixed by a hash of its expression (of 8 buckets: 4 SFT, 2 RL, 2 held-out), so the
# three splits never share a problem whatever their sizes and seeds.
_BUCKETS = 8
_SPLIT_BUCKETS = {"train": range(0, 4), "rl": range(4, 6), "eval": range(6, 8)}
# reasoning-gym seeds item i with seed + i: nearby seeds give the same problems shifted by one, so each
# task seed starts its own stretch of the stream.
_SEED_STRIDE = 10_000_019


def problem_split(expression: str) -> str:
    """The split (``"train"``, ``"rl"`` or ``"eval"``) the mixed-supervision problem ``expression`` is in."""
    bucket = zlib.crc32(expression.encode()) % _BUCKETS
    return next(split for split, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def mixed_supervision_dataset(split: str, size: int, seed: int, config: ArithmeticTaskConfig) -> Dataset:
    """``size`` chain-sum problems of ``split`` for the mixed-supervision task.

    - ``"train"`` (SFT): ``question``, ``answer`` and ``solution``; a share ``config.answer_only_share``
      of the solutions, drawn per problem from ``seed``, is only ``Answer: N``, the rest the worked steps.
    - ``"rl"`` (RL prompts) and ``"eval"`` (held out): fresh problems, ``question`` and ``answer`` only.
    """
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_BUCKETS)}, got {split!r}")
    # A problem lands in a split with probability >= 1/4: 8x the size leaves ample room.
    stream = _chain_sums(seed * _SEED_STRIDE, config, 8 * size + 1000)
    rows = {"question": [], "answer": [], "solution": []}
    answer_only = random.Random(seed)
    for expression, question, answer, solution in stream:
        if len(rows["question"]) == size:
            break
        if problem_split(expression) != split:
            continue
        if split == "train" and answer_only.random() < config.answer_only_share:
            solution = f"Answer: {answer}"
        rows["question"].append(question)
        rows["answer"].append(answer)
        rows["solution"].append(solution)
    if len(rows["question"]) < size:
        raise ConfigError(
            f"task arithmetic_mixed: only {len(rows['question'])} of {size} {split} problems found; ask for "
            "fewer (--num_train / --num_eval)"
        )
    if split != "train":
        del rows["solution"]
    return Dataset.from_dict(rows)
