"""``verify``: the one way llmac calls a reward function (rollouts, MC labelling and RL loops alike)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from llmac.rewards.registry import RewardFn


def verify(
    reward_fn: RewardFn, texts: Sequence[str], answers: Sequence[str], name: str | None = None
) -> list[float]:
    """``reward_fn`` on a batch, as floats, with a clear error when it raises, miscounts or returns NaN.

    ``name`` (the registered name or ``module:function`` path) is what the errors call the function;
    by default its qualified Python name.
    """
    if name is None:
        name = (
            f"{getattr(reward_fn, '__module__', '?')}:{getattr(reward_fn, '__qualname__', repr(reward_fn))}"
        )
    try:
        rewards = [float(r) for r in reward_fn(list(texts), list(answers))]
    except Exception as exc:  # any failure of user code is reported with what it was given
        raise RuntimeError(
            f"reward function {name!r} raised on a batch of {len(texts)} completions: {exc!r}"
        ) from exc
    if len(rewards) != len(texts):
        raise ValueError(
            f"reward function {name!r} returned {len(rewards)} rewards for {len(texts)} completions"
        )
    for i, reward in enumerate(rewards):
        if not math.isfinite(reward):
            raise ValueError(
                f"reward function {name!r} returned {reward} for completion {i} ({texts[i][:80]!r}); "
                "rewards must be finite numbers"
            )
    return rewards
