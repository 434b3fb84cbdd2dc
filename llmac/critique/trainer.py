"""``llmac critique train``: Critique-RL (arXiv 2510.24320) on the RL core.

Two models: the **critic** is the policy (trained, its weights synced into its engine after every
update) and the **actor** is frozen (only sampled: it answers and, in stage II, refines).

Engines. Each model has its own rollout engine, built from the same ``EngineConfig``: the critic's is
the one :class:`llmac.rl.loop.RunLoop` syncs (the episodes' ``engine``), the actor's is loaded once and
never receives weights. One engine serving both would have to swap the actor's and the critic's weights
twice per iteration (stage II samples the actor after the critic), resending a whole model each time;
two engines hold both at once, and the frozen actor's costs nothing after it starts. On GPU give each
vLLM engine its share of memory (``gpu_memory_utilization``); on CPU the ``hf`` engine starts at once.
Both can also be handed in (tests, one process driving several runs).

Each iteration (:meth:`CritiqueRLTrainer.iteration`), top to bottom:

1. episodes (:mod:`llmac.critique.episodes`): actor solutions, k critiques each, rewards (stage I
   ``discrimination``: +1/-1 for the final verdict against the oracle; stage II ``helpfulness``:
   1[refined answer correct] + 0.2 for a right verdict, -1 for a wrong one; ``delta``, ``correct``);
2. scoring: the critic's log-probs of its critiques (at the sampling temperature) and the reference's;
   each reward minus ``kl_coef`` times the critique's KL to the reference; RLOO advantages over the k
   critiques of a solution (:mod:`llmac.critique.objective`);
3. ``epochs`` passes of policy-gradient updates over minibatches.

Stage I starts from the SFT'd critic (``llmac critique sft``) with it as the reference; stage II starts
from the stage-I critic, again its own reference (``reference_model`` overrides). Output: ``metrics.jsonl``,
``checkpoints/`` (a rerun resumes) and the final ``critic/`` (plain ``from_pretrained``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from llmac.config import ModelConfig, parse_config
from llmac.critique.config import CritiqueRLConfig
from llmac.critique.episodes import CritiqueEpisodes, Problems
from llmac.critique.objective import critique_advantages, critique_policy_loss, kl_shaped_rewards
from llmac.data.tasks import TaskConfig, load_task
from llmac.distributed import (
    configure_deepspeed,
    end_process_group,
    full_state_dict,
    make_accelerator,
    mean_over_processes,
    prepare_frozen_model,
)
from llmac.engines import EngineConfig, RolloutEngine, build_engine
from llmac.errors import ConfigError
from llmac.losses import masked_mean
from llmac.models import load_actor, load_tokenizer
from llmac.outputs import finish_output, prepare_output
from llmac.rewards.registry import get_reward_fn
from llmac.rl.batch import TokenBatch, build_token_batch
from llmac.rl.forward import ForwardPasses, PolicyAndValue
from llmac.rl.loop import RunLoop, Schedule, StateInAccelerate
from llmac.rl.saving import save_trained_model
from llmac.rl.updates import apply_gradients
from llmac.schedules import lr_multiplier

logger = logging.getLogger(__name__)


def _model_folder(path: str, field: str) -> Path:
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"llmac critique train: {field} must be a saved model folder, got {path}")
    return Path(path)


class CritiqueRLTrainer(StateInAccelerate):
    """The critic, its reference and optimizer, and the episodes: the algorithm a RunLoop drives."""

    def __init__(
        self,
        model_config: ModelConfig,
        task_config: TaskConfig,
        engine_config: EngineConfig,
        config: CritiqueRLConfig,
        critic_engine: RolloutEngine | None = None,
        actor_engine: RolloutEngine | None = None,
    ) -> None:
        """``critic_engine`` (holding the critic's starting weights) and ``actor_engine``: running engines
        to use and leave running (give both or neither; ``config.actor`` is then not read); by default
        the main process starts them."""
        if (critic_engine is None) != (actor_engine is None):
            raise ValueError("give both engines (critic and actor) or neither")
        self.config = config
        critic_path = _model_folder(model_config.model_name_or_path, "model_name_or_path (the critic)")
        owns_engines = critic_engine is None
        actor_path = _model_folder(config.actor, "actor") if owns_engines else None
        trackers = [t.strip() for t in config.report_to.split(",") if t.strip() not in ("", "none")]
        self.accelerator = make_accelerator(log_with=trackers or None, project_dir=config.output_dir)
        configure_deepspeed(self.accelerator, config.mini_batch_size, config.max_grad_norm)
        torch.manual_seed(config.seed)
        self.tokenizer = load_tokenizer(critic_path)
        policy = load_actor(critic_path, model_config.dtype, model_config.lora_settings())
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        total = config.num_iterations * config.optimizer_steps_per_iteration(self.accelerator.num_processes)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(config.lr_scheduler_type, config.warmup_steps, total)
        )
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.model, self.optimizer = self.accelerator.prepare(PolicyAndValue(policy, None), optimizer)
        self.model.eval()  # no dropout: old and new log-probs come from the same function
        self.reference = None
        if config.kl_coef > 0:
            reference_path = config.reference_model or critic_path
            self.reference = prepare_frozen_model(
                load_actor(reference_path, model_config.dtype), self.accelerator
            )
        self.forward = ForwardPasses(config.micro_batch_size, config.temperature)

        if owns_engines and self.accelerator.is_main_process:
            critic_engine = build_engine(critic_path, engine_config, self.tokenizer)
            actor_engine = build_engine(actor_path, engine_config)
        train = Problems.of(load_task(task_config, "rl"))
        held_out = Problems.of(load_task(task_config, "eval"), config.eval_problems)
        self.episodes = CritiqueEpisodes(
            config,
            self.accelerator,
            critic_engine,
            actor_engine,
            train,
            held_out,
            get_reward_fn(config.answer_reward),
            self.tokenizer,
            owns_engines,
        )
        schedule = Schedule(
            config.output_dir,
            config.num_iterations,
            config.eval_every,
            config.checkpoint_every,
            config.keep_checkpoints,
            config.progress,
            hub_model_id=None,
            hub_private_repo=False,
        )
        tracked = {k: v for k, v in asdict(config).items() if v is not None}
        self.loop = RunLoop(
            "critique",
            schedule,
            self.accelerator,
            self,
            self.episodes,  # type: ignore[arg-type]
            evaluate=self.episodes.evaluate,
            tracker_config=tracked,
        )

    def train(self) -> Path:
        return self.loop.run()

    # -- what the loop asks of an algorithm --------------------------------------------------------
    def iteration(self, number: int) -> dict:
        """Episodes, scoring, updates; the iteration's metrics."""
        groups, episode_metrics = self.episodes.rollouts(number)
        mine = self.episodes.share(groups)
        if not mine:
            return {"iteration": number, "skipped_iteration": 1, **episode_metrics}
        samples = [s for group in mine for s in group]
        batch = build_token_batch(samples, [s.reward for s in samples], self.tokenizer.pad_token_id)
        start = time.perf_counter()
        old, advantages, score_metrics = self.score(batch)
        scored = time.perf_counter()
        train_metrics = self.update(number, batch, old, advantages)
        return {
            "iteration": number,
            **episode_metrics,
            **score_metrics,
            **train_metrics,
            "score_seconds": scored - start,
            "update_seconds": time.perf_counter() - scored,
            "skipped_iteration": 0,
        }

    def close(self) -> None:
        self.loop.close()

    # -- scoring and updates -----------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Old log-probs, KL-shaped rewards and their RLOO advantages (over this process's whole groups)."""
        config, mask = self.config, batch.completion_mask
        old = self.forward.outputs(self.model, batch, with_value=False).logprobs
        ref = self.forward.reference_logprobs(self.reference, batch) if self.reference is not None else None
        shaped, kl = kl_shaped_rewards(batch.rewards, old, ref, mask, config.kl_coef)
        advantages = critique_advantages(shaped, config.samples_per_prompt)
        metrics = {
            "kl": kl.mean().item(),
            "shaped_reward": shaped.mean().item(),
            "advantage_abs": advantages.abs().mean().item(),
        }
        return old, advantages, mean_over_processes(metrics, self.accelerator)

    def update(self, number: int, batch: TokenBatch, old: torch.Tensor, advantages: torch.Tensor) -> dict:
        """``epochs`` passes of minibatch policy-gradient steps; their mean stats over every process."""
        config = self.config
        stats: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(config.seed * 7919 + number)
        for _ in range(config.epochs):
            for chunk in torch.randperm(len(batch), generator=generator).split(config.mini_batch_size):
                part = batch.select(chunk)
                outputs = self.forward.outputs(self.model, part, with_value=False, entropy_grad=False)
                loss, step = critique_policy_loss(
                    outputs.logprobs,
                    old[chunk],
                    advantages[chunk],
                    part.completion_mask,
                    config.clip,
                    config.loss_aggregation,
                )
                step["entropy"] = masked_mean(outputs.entropy, part.completion_mask).item()
                step["learning_rate"] = apply_gradients(
                    loss, self.accelerator, self.model, self.optimizer, self.scheduler, config.max_grad_norm
                )
                for key, value in step.items():
                    stats.setdefault(key, []).append(value)
        return mean_over_processes({k: float(np.mean(v)) for k, v in stats.items()}, self.accelerator)

    def save(self) -> None:
        """Save the critic (LoRA merged) into ``<output_dir>/critic``; every process calls it."""
        weights = full_state_dict(self.policy(), self.accelerator)
        critic = Path(self.config.output_dir) / "critic"
        save_trained_model(self.policy(), weights, self.tokenizer, critic, "critique train", self.accelerator)
        self.accelerator.wait_for_everyone()


# What a `llmac critique train` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, TaskConfig, EngineConfig, CritiqueRLConfig)


def run_critique_rl(
    model_config: ModelConfig, task_config: TaskConfig, engine_config: EngineConfig, config: CritiqueRLConfig
) -> Path:
    """Train the critic with Critique-RL (see the module docstring); returns the run folder.

    A rerun resumes the run at ``output_dir``; ``overwrite`` starts afresh over an earlier llmac output.
    """
    sources = [model_config.model_name_or_path, config.actor, config.reference_model]
    work = prepare_output(
        config.output_dir, "critique train", config.overwrite, sources, resumable=lambda _: True
    )
    CritiqueRLTrainer(model_config, task_config, engine_config, replace(config, output_dir=str(work))).train()
    return finish_output(work, config.output_dir, "critique train")


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, task_config, engine_config, config = parse_config(
        CONFIG_CLASSES, argv, prog="llmac critique train"
    )
    output = run_critique_rl(model_config, task_config, engine_config, config)
    end_process_group()
    print(f"llmac critique train: critic in {(output / 'critic').resolve()}")
    return output
