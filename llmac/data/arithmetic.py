"""Multi-step arithmetic: the task a tiny model learns on CPU and whose mistakes are step mistakes.

Problems come from reasoning-gym's ``chain_sum``; llmac writes their reference solutions one
operation per line, then ``Answer: N``::

    38 - 57 = -19
    -19 + 10 = -9
    Answer: -9
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from datasets import Dataset

_TERM = re.compile(r"\s*([+-])\s*(\d+)")


@dataclass
class ArithmeticTaskConfig:
    """Difficulty and size of the chain-sum task."""

    min_terms: int = field(default=3, metadata={"help": "Fewest numbers in a problem."})
    max_terms: int = field(default=5, metadata={"help": "Most numbers in a problem."})
    min_digits: int = field(default=1, metadata={"help": "Fewest digits per number."})
    max_digits: int = field(default=2, metadata={"help": "Most digits per number."})
    instruction: bool = field(
        default=False,
        metadata={
            "help": "Keep reasoning-gym's English instruction in the question (for real models); "
            "off, the question is the bare expression (for the character-level tiny model)."
        },
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


def arithmetic_dataset(size: int, seed: int, config: ArithmeticTaskConfig | None = None) -> Dataset:
    """``size`` chain-sum problems with ``question``, ``answer`` and step-by-step ``solution`` columns."""
    import reasoning_gym

    config = config or ArithmeticTaskConfig()
    source = reasoning_gym.create_dataset(
        "chain_sum",
        size=size,
        seed=seed,
        min_terms=config.min_terms,
        max_terms=config.max_terms,
        min_digits=config.min_digits,
        max_digits=config.max_digits,
    )
    rows = {"question": [], "answer": [], "solution": []}
    for item in source:
        expression = item["metadata"]["expression"]
        steps = solve_chain(expression)
        if steps[-1] != f"Answer: {item['answer']}":
            raise AssertionError(
                f"chain_sum item {item['metadata']['source_index']}: {steps[-1]} != {item['answer']}"
            )
        rows["question"].append(item["question"] if config.instruction else f"{expression} =")
        rows["answer"].append(str(item["answer"]))
        rows["solution"].append("\n".join(steps))
    return Dataset.from_dict(rows)
