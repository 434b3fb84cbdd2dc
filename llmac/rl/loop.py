"""The run of an online RL pipeline: resume, iterate, evaluate, log, checkpoint, sync weights, save, close.

:class:`RunLoop` drives an :class:`Algorithm` (PPO today) that it holds, not one it is a base of: the
algorithm does one iteration (sample, score, update) and the loop does everything around it, in the
order :meth:`RunLoop.run` reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from llmac.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from llmac.distributed import stream_weights
from llmac.engines import RolloutEngine
from llmac.hub import push_model
from llmac.metrics_log import MetricsLog
from llmac.models import plain_weight_units
from llmac.rl.sampler import Sampler

logger = logging.getLogger(__name__)


class Algorithm(Protocol):
    """What the loop asks of an RL algorithm."""

    def iteration(self, number: int) -> dict:
        """Iteration ``number``: sample, score, update. Its metrics; ``skipped_iteration`` 1 when it did
        not update (the loop then does not sync weights)."""

    def state(self) -> dict:
        """What a checkpoint must hold beyond accelerate's state (JSON-serialisable)."""

    def load_state(self, state: dict) -> None: ...

    def policy(self) -> torch.nn.Module:
        """The trained actor (unwrapped), whose weights the rollout engine runs."""

    def save(self) -> None:
        """Save the final models into ``output_dir``; every process calls it."""


class StateInAccelerate:
    """:class:`Algorithm`'s state methods for one whose whole state (models, optimizer, schedule, RNG) is in
    accelerate's checkpoint, and whose trained policy is ``self.model``'s ``policy`` (a
    :class:`~llmac.rl.forward.PolicyAndValue` prepared by ``self.accelerator``)."""

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model).policy


@dataclass(frozen=True)
class Schedule:
    """When the loop evaluates, checkpoints and stops (the fields of the same names in a pipeline's config)."""

    output_dir: str
    num_iterations: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    progress: bool
    hub_model_id: str | None
    hub_private_repo: bool

    @classmethod
    def of(cls, config) -> Schedule:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


class RunLoop:
    """The run around an algorithm; resumes from the newest checkpoint of ``output_dir`` when built."""

    def __init__(self, name: str, schedule: Schedule, accelerator, algorithm: Algorithm, sampler: Sampler,
                 evaluate: Callable[[], dict] | None = None, tracker_config: dict | None = None) -> None:  # fmt: skip
        self.name, self.schedule, self.accelerator = name, schedule, accelerator
        self.algorithm, self.sampler = algorithm, sampler
        self.evaluate = evaluate or sampler.evaluate
        self.log = MetricsLog(schedule.output_dir, enabled=accelerator.is_main_process)
        self.start_iteration = self._resume()
        if accelerator.is_main_process:
            accelerator.init_trackers(f"llmac-{name}", config=tracker_config or {})

    def run(self) -> Path:
        """Every remaining iteration, then the final models (and their Hub push); returns the run folder."""
        schedule = self.schedule
        if self.start_iteration == 0 and schedule.eval_every:
            self.log.write({"iteration": 0, "completions": 0, **self.evaluate()})
        bar = tqdm(range(self.start_iteration, schedule.num_iterations), initial=self.start_iteration,
                   total=schedule.num_iterations, desc=self.name, unit="it",
                   disable=not (schedule.progress and self.accelerator.is_main_process))  # fmt: skip
        try:
            for iteration in bar:
                metrics = self.step(iteration + 1)
                bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("reward", "eval_accuracy") if k in metrics})
            self.algorithm.save()
            if schedule.hub_model_id and self.accelerator.is_main_process:
                out = Path(schedule.output_dir) / "actor"
                push_model(out, schedule.hub_model_id, private=schedule.hub_private_repo)
            self.close()  # first: accelerate's end_training destroys any process group, an in-process engine's too
            self.accelerator.end_training()
        finally:
            self.close()
        return Path(schedule.output_dir)

    def step(self, number: int) -> dict:
        """Iteration ``number`` and its weight sync, then its evaluation, metrics and checkpoint (as scheduled)."""
        schedule = self.schedule
        start = time.perf_counter()
        metrics = self.algorithm.iteration(number)
        if not metrics["skipped_iteration"]:
            waited = self.sampler.wait()
            synced = time.perf_counter()
            self.sync_weights()
            metrics.update(sampler_wait_seconds=waited, sync_seconds=time.perf_counter() - synced)
        metrics["iteration_seconds"] = time.perf_counter() - start
        if schedule.eval_every and (number % schedule.eval_every == 0 or number == schedule.num_iterations):
            start = time.perf_counter()
            metrics.update(self.evaluate())
            metrics["eval_seconds"] = time.perf_counter() - start
        self.log.write(metrics)
        self.accelerator.log(metrics, step=number)
        if schedule.checkpoint_every and number % schedule.checkpoint_every == 0:
            state = {**self.sampler.state(), **self.algorithm.state()}
            save_checkpoint(self.accelerator, schedule.output_dir, number, state, schedule.keep_checkpoints)
        return metrics

    def sync_weights(self) -> None:
        """Push the actor's weights into the engine (:func:`sync_engine_weights`)."""
        sync_engine_weights(self.algorithm.policy(), self.sampler.engine, self.accelerator)

    def close(self) -> None:
        """Let a background batch finish, then stop the rollout engine."""
        self.sampler.close()

    def _resume(self) -> int:
        checkpoint = latest_checkpoint(self.schedule.output_dir)
        if checkpoint is None:
            return 0
        state = load_checkpoint(self.accelerator, checkpoint)
        self.sampler.load_state(state)
        self.algorithm.load_state(state)
        self.log.truncate_after(state["iteration"])
        self.sync_weights()
        logger.info("resumed from %s (iteration %d)", checkpoint, state["iteration"])
        return state["iteration"]


def sync_engine_weights(policy: torch.nn.Module, engine: RolloutEngine | None, accelerator) -> None:
    """Push ``policy``'s plain weights (LoRA merged, a tied head included) into ``engine``, gathered
    (ZeRO-3) and sent one layer at a time. Every process calls it; only the main one has an engine."""
    weights = stream_weights(plain_weight_units(policy), accelerator)
    if engine is not None:
        engine.load_weights(weights)
    for _ in weights:  # the other processes take part in every gather
        pass
    accelerator.wait_for_everyone()
