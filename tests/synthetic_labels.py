"""Synthetic labelled solutions for critic tests, with labels known by construction.

Each arithmetic problem gives its reference solution (every step labelled 1) and a corrupted copy in
which one operation's result is off by thousands and the later steps carry the wrong value on (steps
before it labelled 1, from it on 0).
"""

from __future__ import annotations

import random

from datasets import Dataset


def corrupt_solution(solution: str, rng: random.Random) -> tuple[list[str], int]:
    """The steps of ``solution`` with one operation's result wrong (carried on), and that step's index."""
    lines = solution.split("\n")
    k = rng.randrange(len(lines) - 1)  # an operation line, not "Answer: N"
    head, _, result = lines[k].rpartition(" = ")
    total = int(result) + rng.choice([-1, 1]) * 1000 * rng.randint(1, 9)
    lines[k] = f"{head} = {total}"
    for j in range(k + 1, len(lines) - 1):
        _, op, number, _, _ = lines[j].split(" ")
        new = total + int(number) if op == "+" else total - int(number)
        lines[j] = f"{total} {op} {number} = {new}"
        total = new
    lines[-1] = f"Answer: {total}"
    return lines, k


def labelled_dataset(rows: Dataset, seed: int = 0) -> Dataset:
    """Two labelled solutions per problem in the PRM layout: the reference one and a corrupted one."""
    rng = random.Random(seed)
    out: dict[str, list] = {"prompt": [], "completions": [], "labels": [], "hard_labels": []}
    for question, solution in zip(rows["question"], rows["solution"], strict=True):
        good = solution.split("\n")
        bad, k = corrupt_solution(solution, rng)
        for steps, labels in ((good, [1.0] * len(good)), (bad, [float(t < k) for t in range(len(bad))])):
            out["prompt"].append(question)
            out["completions"].append(steps)
            out["labels"].append(labels)
            out["hard_labels"].append([int(v) for v in labels])
    return Dataset.from_dict(out)
