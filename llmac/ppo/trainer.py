"""``llmac ppo``: PPO for a reasoning actor with a step-level critic.

Runs as ``llmac ppo --config recipes/ppo/<recipe>.yaml`` on one process, or under
``accelerate launch --config_file recipes/accelerate/<zero2|zero3>_cpu.yaml -m llmac ppo ...``.

Each iteration, top to bottom (:meth:`PPOTrainer.iteration`):

1. the main process samples ``samples_per_prompt`` completions for a batch of prompts with the rollout
   engine and verifies them; the groups are broadcast and split between the processes;
2. each process scores its share: old and reference log-probs, values at step starts, rewards,
   advantages (step-level GAE by default: one value per step, its advantage broadcast to its tokens);
3. ``ppo_epochs`` passes of clipped-surrogate updates over minibatches (actor and value model in one
   DeepSpeed engine, their own learning rates).

The run around the iterations (resume, evaluation, logging, checkpoints, pushing the updated actor's
weights into the engine, saving) is :class:`llmac.rl.loop.RunLoop`'s; the sampling is
:class:`llmac.rl.sampler.Sampler`'s.

Metrics go to ``<output_dir>/metrics.jsonl`` and to the ``report_to`` trackers; checkpoints to
``<output_dir>/checkpoints`` (a rerun resumes from the newest); the final actor and value model to
``<output_dir>/actor`` and ``<output_dir>/critic``, loadable with plain ``from_pretrained``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from llmac.advantages import masked_whiten, overlong_penalty
from llmac.config import ModelConfig, parse_config
from llmac.data.tasks import TaskConfig, load_task
from llmac.distributed import (
    configure_deepspeed,
    end_process_group,
    full_state_dict,
    make_accelerator,
    mean_over_processes,
    sum_over_processes,
)
from llmac.engines import EngineConfig, RolloutEngine, build_engine
from llmac.errors import ConfigError
from llmac.losses import explained_variance, kl_penalty, masked_mean
from llmac.models import load_tokenizer
from llmac.outputs import finish_output, prepare_output
from llmac.ppo.config import PPOConfig
from llmac.ppo.models import build_models
from llmac.ppo.objective import Scores, ppo_loss
from llmac.rewards.registry import get_reward_fn
from llmac.rl.batch import Sample, TokenBatch, build_token_batch
from llmac.rl.estimators import get_estimator
from llmac.rl.forward import ForwardPasses, TokenOutputs, engine_logprob_gap
from llmac.rl.loop import RunLoop, Schedule, StateInAccelerate
from llmac.rl.sampler import Prompts, Sampler, SamplerSettings
from llmac.rl.saving import save_trained_model
from llmac.rl.targets import sequence_targets
from llmac.rl.updates import apply_gradients

logger = logging.getLogger(__name__)


def shaped_rewards(samples: Sequence[Sample], config: PPOConfig) -> list[float]:
    """Outcome rewards plus the soft overlong penalty, when it is on."""
    rewards = [s.reward for s in samples]
    if config.overlong_buffer:
        lengths = torch.tensor([len(s.token_ids) for s in samples])
        penalty = overlong_penalty(lengths, config.max_new_tokens, config.overlong_buffer)
        rewards = [r + float(p) for r, p in zip(rewards, penalty, strict=True)]
    return rewards


class PPOTrainer(StateInAccelerate):
    """PPO's models, scoring and updates: the algorithm a :class:`~llmac.rl.loop.RunLoop` drives."""

    def __init__(self, model_config: ModelConfig, task_config: TaskConfig, engine_config: EngineConfig,
                 config: PPOConfig, engine: RolloutEngine | None = None) -> None:  # fmt: skip
        """``engine``: a running rollout engine already holding the actor's weights (the caller's, left
        running at the end); by default the main process starts one from ``engine_config``."""
        self.config = config
        self.estimator = get_estimator(config.advantage_estimator)
        actor_path = Path(model_config.model_name_or_path)
        if not (actor_path / "config.json").is_file():
            raise ConfigError(f"llmac ppo: model_name_or_path must be a saved actor folder, got {actor_path}")
        trackers = [t.strip() for t in config.report_to.split(",") if t.strip() not in ("", "none")]
        self.accelerator = make_accelerator(log_with=trackers or None, project_dir=config.output_dir)
        configure_deepspeed(self.accelerator, config.mini_batch_size, config.max_grad_norm)
        torch.manual_seed(config.seed)
        self.tokenizer = load_tokenizer(actor_path)
        reward_fn = get_reward_fn(config.reward)
        train = Prompts.tokenize(self.tokenizer, load_task(task_config, "rl"), config.max_prompt_length)
        held_out = Prompts.tokenize(self.tokenizer, load_task(task_config, "eval"), config.max_prompt_length)
        models = build_models(model_config, engine_config, config, self.accelerator, self.tokenizer)
        self.model, self.optimizer, self.scheduler = models.model, models.optimizer, models.scheduler
        self.reference, self.process_reward_model = models.reference, models.process_reward_model
        self.forward = ForwardPasses(config.micro_batch_size, config.temperature, config.value_activation)
        main = self.accelerator.is_main_process
        owns_engine = engine is None
        if owns_engine and main:
            engine = build_engine(actor_path, engine_config, self.tokenizer)
        self.sampler = Sampler(SamplerSettings.of(config), self.accelerator, engine, train, held_out,
                               reward_fn, owns_engine)  # fmt: skip
        tracked = {k: v for k, v in asdict(config).items() if v is not None}
        self.loop = RunLoop("ppo", Schedule.of(config), self.accelerator, self, self.sampler,
                            evaluate=self.evaluate, tracker_config=tracked)  # fmt: skip

    @property
    def completions(self) -> int:
        """Completions generated so far, filtered groups included."""
        return self.sampler.completions

    def train(self) -> Path:
        return self.loop.run()

    # -- what the loop asks of an algorithm --------------------------------------------------------
    def iteration(self, number: int) -> dict:
        """One PPO iteration: rollouts, scoring, updates. Returns its metrics."""
        groups, rollout_metrics = self.sampler.rollouts(number)
        if not groups:  # dynamic sampling found no group with any signal
            return {"iteration": number, "completions": self.completions, "skipped_iteration": 1,
                    **rollout_metrics}  # fmt: skip
        self.sampler.sample_ahead(number)
        samples, advantages = self.my_share(groups)
        batch = build_token_batch(samples, shaped_rewards(samples, self.config), self.tokenizer.pad_token_id)
        start = time.perf_counter()
        scores = self.score(batch, advantages)
        scored = time.perf_counter()
        train_metrics = self.update(number, batch, scores)
        updated = time.perf_counter()
        tokens = float(sum_over_processes(batch.completion_mask.sum().float(), self.accelerator))
        return {
            "iteration": number,
            "completions": self.completions,
            **rollout_metrics,
            **train_metrics,
            "train_tokens_per_s": tokens / max(updated - start, 1e-9),
            "score_seconds": scored - start,
            "update_seconds": updated - scored,
            "skipped_iteration": 0,
        }

    def evaluate(self) -> dict:
        return self.sampler.evaluate()

    def close(self) -> None:
        self.loop.close()

    # -- 1. this process's share -------------------------------------------------------------------
    def my_share(self, groups: list[list[Sample]]) -> tuple[list[Sample], torch.Tensor | None]:
        """This process's groups and, critic-free, their advantages (computed over the whole batch)."""
        advantages = None
        if not self.estimator.needs_value_model:
            rewards = torch.tensor([shaped_rewards(g, self.config) for g in groups], dtype=torch.float32)
            advantages = self.sampler.share(self.estimator.group_advantages(rewards)).flatten()
        return [s for g in self.sampler.share(groups) for s in g], advantages

    # -- 2. scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: TokenBatch, sequence_advantages: torch.Tensor | None) -> Scores:
        """Old log-probs, reference KL, values and targets of this process's batch."""
        config, critic = self.config, self.estimator.needs_value_model
        from_engine = config.old_logprobs == "engine"
        outputs = TokenOutputs(None, None, None)
        if critic or not from_engine:
            outputs = self.forward.outputs(self.model, batch, critic, with_policy=not from_engine)
        old = batch.engine_logprobs if from_engine else outputs.logprobs
        ref = self.reference_logprobs(batch) if config.kl_coef > 0 else None
        kl = kl_penalty(old, ref, config.kl_estimator) if ref is not None else None
        if not critic:
            return Scores(old, ref, kl, sequence_targets(batch, sequence_advantages))
        penalty = config.kl_coef * kl if kl is not None and config.kl_in == "reward" else None
        process_rewards = None
        if self.process_reward_model is not None:
            prm = self.forward.process_rewards(self.process_reward_model, batch)
            process_rewards = config.process_reward_coef * prm
        targets = self.estimator.targets(
            batch, outputs.values, config.gamma, config.lam, penalty, process_rewards
        )
        if config.whiten_advantages:
            total = partial(sum_over_processes, accelerator=self.accelerator)
            targets.advantages = masked_whiten(
                targets.advantages, batch.completion_mask, sum_over_processes=total
            )
        return Scores(old, ref, kl, targets)

    def reference_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        if self.reference is None:  # LoRA: the reference is the base model
            with self.policy().disable_adapter():
                return self.forward.outputs(self.model, batch, with_value=False).logprobs
        return self.forward.reference_logprobs(self.reference, batch)

    # -- 3. updates --------------------------------------------------------------------------------
    def update(self, number: int, batch: TokenBatch, scores: Scores) -> dict:
        """``ppo_epochs`` passes of minibatch updates; their mean stats, over every process."""
        config, targets = self.config, scores.targets
        policy_weight = 0.0 if number <= config.value_warmup_iterations else 1.0
        stats: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(config.seed * 7919 + number)
        gap: dict[str, float] = {}
        for _ in range(config.ppo_epochs):
            for chunk in torch.randperm(len(batch), generator=generator).split(config.mini_batch_size):
                part = batch.select(chunk)
                outputs = self.forward.outputs(self.model, part, self.estimator.needs_value_model,
                                               entropy_grad=config.entropy_coef > 0)  # fmt: skip
                if not gap and config.old_logprobs == "engine" and config.temperature == 1.0:
                    # No forward pass ran before this first update: check the sync on its minibatch.
                    gap = engine_logprob_gap(
                        outputs.logprobs.detach(), part.engine_logprobs, part.completion_mask
                    )
                loss, step = ppo_loss(outputs, scores.select(chunk), part, config, policy_weight)
                step["learning_rate"] = apply_gradients(  # the actor's, for this step
                    loss, self.accelerator, self.model, self.optimizer, self.scheduler, config.max_grad_norm
                )
                for key, value in step.items():
                    stats.setdefault(key, []).append(value)
        metrics = {k: float(np.mean(v)) for k, v in stats.items()}
        if config.temperature == 1.0 and config.old_logprobs == "trainer":
            gap = engine_logprob_gap(scores.old_logprobs, batch.engine_logprobs, batch.completion_mask)
        metrics.update(gap)
        if scores.kl is not None:
            metrics["kl"] = masked_mean(scores.kl, batch.completion_mask).item()
        if targets.returns is not None:
            metrics["explained_variance"] = explained_variance(
                targets.old_values, targets.returns, targets.value_mask
            )
            metrics["value_mean"] = masked_mean(targets.old_values, targets.value_mask).item()
        return mean_over_processes(metrics, self.accelerator)

    # -- 4. the final models -----------------------------------------------------------------------
    def policy_weights(self) -> dict[str, torch.Tensor] | None:
        """The actor's full weights (LoRA merged) on the main process; every process must call it."""
        return full_state_dict(self.policy(), self.accelerator)

    def save(self) -> None:
        """Save the actor (and value model) for plain ``from_pretrained``; every process must call it."""
        out, accelerator = Path(self.config.output_dir), self.accelerator
        unwrapped = accelerator.unwrap_model(self.model)
        save_trained_model(
            unwrapped.policy, self.policy_weights(), self.tokenizer, out / "actor", "ppo", accelerator
        )
        if unwrapped.value is not None:
            value_weights = full_state_dict(unwrapped.value, accelerator)
            save_trained_model(
                unwrapped.value, value_weights, self.tokenizer, out / "critic", "ppo", accelerator
            )
        accelerator.wait_for_everyone()


# What a `llmac ppo` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, TaskConfig, EngineConfig, PPOConfig)


def run_ppo(
    model_config: ModelConfig, task_config: TaskConfig, engine_config: EngineConfig, config: PPOConfig
) -> Path:
    """Train with PPO (see the module docstring); returns the run folder.

    A rerun resumes the run at ``output_dir``; ``overwrite`` starts afresh over an earlier llmac output
    there, which stays whole until the new run replaces it (see :mod:`llmac.outputs`).
    """
    sources = [model_config.model_name_or_path, config.value_model, config.process_reward_model]
    work = prepare_output(config.output_dir, "ppo", config.overwrite, sources, resumable=lambda _: True)
    PPOTrainer(model_config, task_config, engine_config, replace(config, output_dir=str(work))).train()
    return finish_output(work, config.output_dir, "ppo")


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, task_config, engine_config, config = parse_config(CONFIG_CLASSES, argv, prog="llmac ppo")
    output = run_ppo(model_config, task_config, engine_config, config)
    end_process_group()
    return output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
