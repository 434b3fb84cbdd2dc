"""Learning-rate schedules: a multiplier of the base rate per optimizer step (for ``LambdaLR``)."""

from __future__ import annotations

import math
from collections.abc import Callable

LR_SCHEDULES = ("constant", "linear", "cosine")


def lr_multiplier(kind: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """``step -> factor``: a linear rise over ``warmup_steps``, then ``kind`` until ``total_steps``.

    ``constant`` holds 1; ``linear`` and ``cosine`` decay to 0 at ``total_steps`` (the run's last
    optimizer step). RL from an annealed SFT checkpoint needs the decay: raising the learning rate
    again and holding it there costs a small model accuracy that annealing back recovers.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {kind!r}; choose one of {', '.join(LR_SCHEDULES)}")
    warmup = max(warmup_steps, 0)
    decay_steps = max(total_steps - warmup, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min((step - warmup) / decay_steps, 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
