"""Field groups several pipelines' configs inherit, so a shared field is declared once.

A config inherits a group (``class PPOConfig(OptimizerFields, ...)``), so its recipe keys and flags stay
flat (``learning_rate: 1e-5`` at the top level, as in TRL). A pipeline whose default differs redeclares
the field with :func:`with_default`, keeping the group's help, range and choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from llmac.config import option
from llmac.engines.base import SamplingConfig
from llmac.schedules import LR_SCHEDULES


def with_default(group: type, name: str, default):
    """``group``'s field ``name`` (help, range, choices) with another default, for a config inheriting it."""
    declared = {f.name: f for f in fields(group)}[name]
    return field(default=default, metadata=declared.metadata)


@dataclass
class OptimizerFields:
    """AdamW and its learning-rate schedule."""

    learning_rate: float = option(1e-5, "AdamW learning rate of the policy.", range="(0, inf)")
    weight_decay: float = option(0.0, "AdamW weight decay.", range="[0, inf)")
    warmup_steps: int = option(
        0,
        "Optimizer steps over which every learning rate rises linearly from 0 (Adam's first steps move "
        "every weight by about the full learning rate, whatever its gradient).",
        range="[0, inf)",
    )
    lr_scheduler_type: str = option(
        "constant",
        "Learning rates after the warm-up: constant, or linear / cosine decay to 0 at the run's last "
        "optimizer step. Decay suits an actor whose SFT annealed its rate to 0: raised again and held, "
        "the rate costs a small model accuracy that annealing back recovers.",
        choices=LR_SCHEDULES,
    )
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this (0: off).", range="[0, inf)")


@dataclass
class SamplingFields:
    """How the pipeline's completions are sampled (an engine call's settings: :meth:`sampling_config`)."""

    temperature: float = option(1.0, "Sampling temperature (0: greedy).", range="[0, inf)")
    top_p: float = option(1.0, "Nucleus sampling mass.", range="(0, 1]")
    max_new_tokens: int = option(256, "Tokens per completion at most.", range="[1, inf)")

    def sampling_config(self, n: int, seed: int | None = None) -> SamplingConfig:
        """The settings of an engine call asking ``n`` completions per prompt, the first with seed ``seed``."""
        return SamplingConfig(
            n=n, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens, seed=seed
        )


@dataclass
class SolutionFields:
    """The solutions sampled per question whose steps a pipeline then labels or values."""

    num_solutions: int = option(4, "Solutions sampled per question.", range="[1, inf)")
    solution_temperature: float = option(1.0, "Temperature of those solutions.", range="[0, inf)")
    solution_max_new_tokens: int = option(256, "Tokens per solution at most.", range="[1, inf)")

    def solution_sampling(self, seed: int) -> SamplingConfig:
        """The settings of an engine call sampling every question's solutions, the first with seed ``seed``."""
        return SamplingConfig(
            n=self.num_solutions,
            temperature=self.solution_temperature,
            max_new_tokens=self.solution_max_new_tokens,
            seed=seed,
        )
