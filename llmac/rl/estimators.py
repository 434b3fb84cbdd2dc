"""Advantage estimators by name: the critic-free group estimators and the GAE ones in one registry.

Each entry says whether it needs a value model and where that model's values are read
(``value_positions``, a :class:`~llmac.rl.batch.TokenBatch` field), so a pipeline asks the entry instead
of testing the name. Add one with :func:`register_estimator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from llmac.advantages import grpo_advantages, lite_ppo_advantages, rloo_advantages
from llmac.rl.targets import Targets, step_gae_targets, token_gae_targets

GroupAdvantages = Callable[[Tensor], Tensor]  # rewards [G, n] -> advantages [G, n]
GaeTargets = Callable[..., Targets]  # (batch, values, gamma, lam, token_penalty, process_rewards)


@dataclass(frozen=True)
class Estimator:
    """One advantage estimator: critic-free (``group_advantages``) or with a value model (``targets``)."""

    name: str
    group_advantages: GroupAdvantages | None = None
    targets: GaeTargets | None = None
    value_positions: str | None = None  # TokenBatch field holding where values are read and trained

    @property
    def needs_value_model(self) -> bool:
        return self.targets is not None


ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(estimator: Estimator) -> Estimator:
    """Make ``estimator`` available under its name; a name is registered once."""
    if estimator.name in ESTIMATORS:
        raise ValueError(f"advantage estimator {estimator.name!r} is already registered")
    if (estimator.group_advantages is None) == (estimator.targets is None):
        raise ValueError(f"estimator {estimator.name!r} needs exactly one of group_advantages and targets")
    if estimator.needs_value_model != (estimator.value_positions is not None):
        raise ValueError(f"estimator {estimator.name!r}: value_positions goes with targets (a value model)")
    ESTIMATORS[estimator.name] = estimator
    return estimator


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {name!r}; registered: {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name]


register_estimator(Estimator("step_gae", targets=step_gae_targets, value_positions="step_positions"))
register_estimator(Estimator("token_gae", targets=token_gae_targets, value_positions="completion_positions"))
register_estimator(Estimator("grpo", group_advantages=grpo_advantages))
register_estimator(Estimator("rloo", group_advantages=rloo_advantages))
register_estimator(Estimator("lite_ppo", group_advantages=lite_ppo_advantages))
