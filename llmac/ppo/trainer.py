"""``llmac ppo``: PPO for a reasoning actor with a step-level critic.

Runs as ``llmac ppo --config recipes/ppo/<recipe>.yaml`` on one process, or under
``accelerate launch --config_file recipes/accelerate/<zero2|zero3>_cpu.yaml -m llmac ppo ...``.

Each iteration, top to bottom (:meth:`PPOTrainer.iteration`):

1. the main process samples ``samples_per_prompt`` completions for a batch of prompts with the rollout
   engine and verifies them; the groups are broadcast and split between the processes;
2. each process scores its share: old and reference log-probs, values at step starts, rewards,
   advantages (step-level GAE by default: one value per step, its advantage broadcast to its tokens);
3. ``ppo_epochs`` passes of clipped-surrogate updates over minibatches (actor and value model in one
   DeepSpeed engine, their own learning rates);
4. the updated actor's weights are gathered (under ZeRO-3 too) and pushed into the running engine.

Metrics go to ``<output_dir>/metrics.jsonl`` and to the ``report_to`` trackers; checkpoints to
``<output_dir>/checkpoints`` (a rerun resumes from the newest); the final actor and value model to
``<output_dir>/actor`` and ``<output_dir>/critic``, loadable with plain ``from_pretrained``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from llmac.advantages import SEQUENCE_ESTIMATORS, overlong_penalty
from llmac.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from llmac.config import ModelConfig, parse_config
from llmac.data.loading import format_prompt
from llmac.data.tasks import TaskConfig, load_task
from llmac.distributed import (
    configure_deepspeed,
    end_process_group,
    full_state_dict,
    make_accelerator,
    prepare_frozen_model,
    stream_weights,
)
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.hub import push_model
from llmac.losses import (
    aggregate,
    entropy_from_logits,
    explained_variance,
    kl_penalty,
    masked_mean,
    policy_loss,
    token_logprobs,
    value_loss,
)
from llmac.metrics_log import MetricsLog
from llmac.models import load_actor, load_tokenizer, plain_weight_units
from llmac.ppo.config import PPOConfig
from llmac.ppo.experience import (
    Sample,
    TokenBatch,
    build_token_batch,
    has_signal,
    in_row_order,
    length_groups,
    sample_groups,
)
from llmac.ppo.targets import Targets, sequence_targets, step_gae_targets, token_gae_targets
from llmac.rewards.registry import get_reward_fn
from llmac.schedules import lr_multiplier

logger = logging.getLogger(__name__)


class PolicyAndValue(torch.nn.Module):
    """The actor and its value model as one module, so one DeepSpeed engine (one optimizer) trains both."""

    def __init__(self, policy: torch.nn.Module, value: torch.nn.Module | None) -> None:
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(self, input_ids, attention_mask, with_value: bool = True, with_policy: bool = True):
        logits = (
            self.policy(input_ids=input_ids, attention_mask=attention_mask).logits if with_policy else None
        )
        values = None
        if with_value and self.value is not None:
            values = self.value(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
        return logits, values


@dataclass
class TokenOutputs:
    """What scoring and the updates read from the models, in the batch's row order."""

    logprobs: torch.Tensor | None  # [B, T] completion tokens' log-probs at the sampling temperature
    entropy: torch.Tensor | None  # [B, T] the policy's entropy at each completion token
    values: torch.Tensor | None  # [B, L] the value model's output (activation applied) at every position


class PromptOrder:
    """Training prompts in a new seeded order every epoch; ``cursor`` counts prompts handed out."""

    def __init__(self, size: int, seed: int, cursor: int = 0) -> None:
        self.size, self.seed, self.cursor = size, seed, cursor

    def take(self, k: int) -> list[int]:
        out = []
        for position in range(self.cursor, self.cursor + k):
            epoch, offset = divmod(position, self.size)
            out.append(int(np.random.default_rng([self.seed, epoch]).permutation(self.size)[offset]))
        self.cursor += k
        return out


def shaped_rewards(samples: Sequence[Sample], config: PPOConfig) -> list[float]:
    """Outcome rewards plus the soft overlong penalty, when it is on."""
    rewards = [s.reward for s in samples]
    if config.overlong_buffer:
        lengths = torch.tensor([len(s.token_ids) for s in samples])
        penalty = overlong_penalty(lengths, config.max_new_tokens, config.overlong_buffer)
        rewards = [r + float(p) for r, p in zip(rewards, penalty, strict=True)]
    return rewards


def sequence_advantages(groups: Sequence[Sequence[Sample]], config: PPOConfig) -> torch.Tensor:
    """Critic-free advantages of every sample, computed on the whole batch (Lite PPO's batch std)."""
    rewards = torch.tensor([shaped_rewards(g, config) for g in groups], dtype=torch.float32)
    return SEQUENCE_ESTIMATORS[config.advantage_estimator](rewards).flatten()


def engine_logprob_gap(
    trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Mean and max |trainer - engine| log-prob of the sampled tokens, before any update.

    The engine samples at the trainer's weights (synced after every update), so the two must match;
    a gap means a broken sync or a precision loss (or, under async rollouts, the sampler's staleness).
    """
    gap = (trainer_logprobs - engine_logprobs).abs()
    return {
        "engine_logprob_gap": masked_mean(gap, mask).item(),
        "engine_logprob_gap_max": gap[mask].max().item(),
    }


class PPOTrainer:
    def __init__(self, model_config: ModelConfig, task_config: TaskConfig, engine_config: EngineConfig,
                 config: PPOConfig) -> None:  # fmt: skip
        self.config = config
        if config.kl_coef > 0 and config.kl_in == "reward" and not config.uses_value_model:
            raise ValueError(
                "PPOConfig: critic-free estimators take the KL in the loss (kl_in='loss'), as GRPO does"
            )
        actor_path = Path(model_config.model_name_or_path)
        if not (actor_path / "config.json").is_file():
            raise ValueError(f"llmac ppo: model_name_or_path must be a saved actor folder, got {actor_path}")
        trackers = [t.strip() for t in config.report_to.split(",") if t.strip() not in ("", "none")]
        self.accelerator = make_accelerator(log_with=trackers or None, project_dir=config.output_dir)
        configure_deepspeed(self.accelerator, config.mini_batch_size, config.max_grad_norm)
        torch.manual_seed(config.seed)
        self.tokenizer = load_tokenizer(actor_path)
        self.reward_fn = get_reward_fn(config.reward)
        self.train_prompts, self.train_answers, skipped = self._prompts(load_task(task_config, "train"))
        self.eval_prompts, self.eval_answers, _ = self._prompts(load_task(task_config, "eval"))
        self.skipped_long_prompts = skipped

        self.model, self.optimizer, self.scheduler = self._trainable_models(
            actor_path, model_config, engine_config
        )
        self.reference = self._reference_model(actor_path, model_config)
        self.process_reward_model = self._process_reward_model(model_config.dtype)
        self.engine = (
            build_engine(actor_path, engine_config, self.tokenizer)
            if self.accelerator.is_main_process
            else None
        )
        self.order = PromptOrder(len(self.train_prompts), config.seed)
        self.log = MetricsLog(config.output_dir, enabled=self.accelerator.is_main_process)
        self.completions = 0  # generated so far, filtered groups included
        # async_rollouts: the main process samples the next batch on a background thread.
        self._sampler: ThreadPoolExecutor | None = None
        self._next_rollouts: Future | None = None
        self.start_iteration = self._resume()
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers(
                "llmac-ppo", config={k: v for k, v in asdict(config).items() if v is not None}
            )

    # -- setup -------------------------------------------------------------------------------------
    def _trainable_models(self, actor_path: Path, model_config: ModelConfig, engine_config: EngineConfig):
        """The actor (LoRA-wrapped if asked) and its value model in one prepared module, their AdamW
        (one learning rate each) and its schedule (linear warm-up, then ``lr_scheduler_type``)."""
        config = self.config
        policy = load_actor(actor_path, model_config.dtype, model_config.lora_settings())
        value = None
        if config.uses_value_model:
            value = self._value_model(actor_path, model_config.dtype, engine_config.delimiter)
        groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": config.learning_rate}]
        if value is not None:
            groups.append({"params": list(value.parameters()), "lr": config.value_learning_rate})
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        total_steps = config.num_iterations * config.optimizer_steps_per_iteration(
            self.accelerator.num_processes
        )
        # Stepped by hand once per optimizer step (a prepared scheduler steps once per process).
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(config.lr_scheduler_type, config.warmup_steps, total_steps)
        )
        self.accelerator.register_for_checkpointing(scheduler)
        model, optimizer = self.accelerator.prepare(PolicyAndValue(policy, value), optimizer)
        model.eval()  # no dropout: old and new log-probs must come from the same function
        return model, optimizer, scheduler

    def _reference_model(self, actor_path: Path, model_config: ModelConfig) -> torch.nn.Module | None:
        """The frozen actor for the KL term; none without KL, or with LoRA (the adapters are disabled)."""
        if self.config.kl_coef <= 0 or model_config.use_lora:
            return None
        return prepare_frozen_model(load_actor(actor_path, model_config.dtype), self.accelerator)

    def _process_reward_model(self, dtype: str) -> torch.nn.Module | None:
        if not self.config.process_reward_model:
            return None
        from llmac.critic.model import load_critic

        self._check_vocabulary(self.config.process_reward_model)
        return prepare_frozen_model(load_critic(self.config.process_reward_model, dtype), self.accelerator)

    def _prompts(self, rows) -> tuple[list[list[int]], list[str], int]:
        """Token ids of the chat-templated questions, without those longer than ``max_prompt_length``."""
        ids, answers, skipped = [], [], 0
        for question, answer in zip(rows["question"], rows["answer"], strict=True):
            tokens = self.tokenizer(format_prompt(self.tokenizer, question), add_special_tokens=False)[
                "input_ids"
            ]
            if len(tokens) > self.config.max_prompt_length:
                skipped += 1
                continue
            ids.append(list(tokens))
            answers.append(answer)
        if skipped:
            logger.warning(
                "skipped %d prompts longer than max_prompt_length=%d", skipped, self.config.max_prompt_length
            )
        if not ids:
            raise ValueError(
                f"every prompt is longer than max_prompt_length={self.config.max_prompt_length} tokens"
            )
        return ids, answers, skipped

    def _value_model(self, actor_path: Path, dtype: str, delimiter: str) -> torch.nn.Module:
        from llmac.critic.model import init_critic, load_critic

        if self.config.value_model is None:
            return init_critic(actor_path, delimiter, dtype)
        self._check_vocabulary(self.config.value_model)
        return load_critic(self.config.value_model, dtype)

    def _check_vocabulary(self, critic_path: str) -> None:
        """A critic reads the actor's token ids, so it must have the actor's vocabulary."""
        from llmac.critic.model import load_critic_tokenizer

        if load_critic_tokenizer(critic_path).get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"the critic at {critic_path} has another tokenizer than the actor: it cannot "
                             "read the actor's token ids; train it from this actor (`llmac critic train`)")  # fmt: skip

    def _resume(self) -> int:
        checkpoint = latest_checkpoint(self.config.output_dir)
        if checkpoint is None:
            return 0
        state = load_checkpoint(self.accelerator, checkpoint)
        self.order.cursor, self.completions = state["prompt_cursor"], state["completions"]
        self.log.truncate_after(state["iteration"])
        self.sync_weights()
        logger.info("resumed from %s (iteration %d)", checkpoint, state["iteration"])
        return state["iteration"]

    # -- the loop ----------------------------------------------------------------------------------
    def train(self) -> Path:
        config = self.config
        if self.start_iteration == 0 and config.eval_every:
            self.log.write({"iteration": 0, "completions": 0, **self.evaluate()})
        bar = tqdm(range(self.start_iteration, config.num_iterations), initial=self.start_iteration,
                   total=config.num_iterations, desc="ppo", unit="it",
                   disable=not (config.progress and self.accelerator.is_main_process))  # fmt: skip
        try:
            for iteration in bar:
                metrics = self.step(iteration + 1)
                shown = {k: f"{metrics[k]:.3f}" for k in ("reward", "eval_accuracy") if k in metrics}
                bar.set_postfix(shown)
            self.save()
            if config.hub_model_id and self.accelerator.is_main_process:
                push_model(
                    Path(config.output_dir) / "actor", config.hub_model_id, private=config.hub_private_repo
                )
            self.close()  # first: accelerate's end_training destroys any process group, an in-process engine's too
            self.accelerator.end_training()
        finally:
            self.close()
        return Path(config.output_dir)

    def step(self, number: int) -> dict:
        """Iteration ``number``, then its evaluation, metrics and checkpoint (as scheduled)."""
        config = self.config
        start = time.perf_counter()
        metrics = self.iteration(number)
        metrics["iteration_seconds"] = time.perf_counter() - start
        if config.eval_every and (number % config.eval_every == 0 or number == config.num_iterations):
            start = time.perf_counter()
            metrics.update(self.evaluate())
            metrics["eval_seconds"] = time.perf_counter() - start
        self.log.write(metrics)
        self.accelerator.log(metrics, step=number)
        if config.checkpoint_every and number % config.checkpoint_every == 0:
            state = {"prompt_cursor": self.order.cursor, "completions": self.completions}
            save_checkpoint(self.accelerator, config.output_dir, number, state, config.keep_checkpoints)
        return metrics

    def iteration(self, number: int) -> dict:
        """One PPO iteration: rollouts, scoring, updates, weight sync. Returns its metrics."""
        groups, rollout_metrics = self.rollouts(number)
        if not groups:  # dynamic sampling found no group with any signal
            return {
                "iteration": number,
                "completions": self.completions,
                "skipped_iteration": 1,
                **rollout_metrics,
            }
        self.sample_ahead(number)
        samples, advantages = self.my_share(groups)
        batch = build_token_batch(samples, shaped_rewards(samples, self.config), self.tokenizer.pad_token_id)
        start = time.perf_counter()
        scores = self.score(batch, advantages)
        scored = time.perf_counter()
        train_metrics = self.update(number, batch, scores)
        updated = time.perf_counter()
        waited = self.wait_for_sampler()
        self.sync_weights()
        tokens = self._sum(float(batch.completion_mask.sum()))
        return {
            "iteration": number,
            "completions": self.completions,
            **rollout_metrics,
            **train_metrics,
            "train_tokens_per_s": tokens / max(updated - start, 1e-9),
            "score_seconds": scored - start,
            "update_seconds": updated - scored,
            "sampler_wait_seconds": waited,
            "sync_seconds": time.perf_counter() - updated - waited,
            "skipped_iteration": 0,
        }

    # -- 1. rollouts -------------------------------------------------------------------------------
    def rollouts(self, number: int) -> tuple[list[list[Sample]], dict]:
        """Sampled, verified groups for this iteration, the same on every process."""
        payload = [None]
        if self.accelerator.is_main_process:
            if self._next_rollouts is not None:  # sampled during the previous iteration
                payload = [self._next_rollouts.result()]
                self._next_rollouts = None
            else:
                payload = [self._sample_batch(number, self.order.cursor, self.completions)]
        if self.accelerator.num_processes > 1:
            dist.broadcast_object_list(payload, src=0)
        groups, metrics, cursor, completions = payload[0]
        self.order.cursor, self.completions = cursor, completions
        return groups, metrics

    def sample_ahead(self, number: int) -> None:
        """Under ``async_rollouts``, start sampling iteration ``number + 1``'s batch in the background.

        The engine still holds the weights that sampled this iteration, so the next batch is one update
        behind. Not done before a checkpoint (the resumed run samples that batch from the saved weights
        and must see the same one) nor after the last iteration.
        """
        config = self.config
        checkpointing = config.checkpoint_every and number % config.checkpoint_every == 0
        if not (config.async_rollouts and self.engine is not None) or checkpointing:
            return
        if number >= config.num_iterations:
            return
        if self._sampler is None:
            self._sampler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmac-rollouts")
        self._next_rollouts = self._sampler.submit(
            self._sample_batch, number + 1, self.order.cursor, self.completions
        )

    def wait_for_sampler(self) -> float:
        """Block until a background batch is sampled (the engine must be idle to take new weights)."""
        if self._next_rollouts is None:
            return 0.0
        start = time.perf_counter()
        self._next_rollouts.exception()  # waits; an error is raised when the batch is taken
        return time.perf_counter() - start

    def _sample_batch(self, number: int, cursor: int, completions: int):
        """Iteration ``number``'s groups, from prompt ``cursor`` on; touches no trainer state (it may run
        on the sampler thread while the trainer updates)."""
        config = self.config
        order = PromptOrder(self.order.size, self.order.seed, cursor)
        wanted = config.prompts_per_iteration
        sampling = SamplingConfig(n=config.samples_per_prompt, temperature=config.temperature,
                                  top_p=config.top_p, max_new_tokens=config.max_new_tokens)  # fmt: skip
        kept, generated, tokens, elapsed = [], [], 0, 0.0
        rounds = config.max_sampling_rounds if config.dynamic_sampling else 1
        for round_ in range(rounds):
            indices = order.take(wanted)
            start = time.perf_counter()
            # Disjoint seeds per (iteration, round): the engine gives sample k of prompt i seed + i*n + k.
            seed = config.seed * 1_000_000_007 + (number * 64 + round_) * wanted * config.samples_per_prompt
            sampling = replace(sampling, seed=seed)
            groups = sample_groups(self.engine, [self.train_prompts[i] for i in indices],
                                   [self.train_answers[i] for i in indices], indices, sampling,
                                   self.reward_fn, config.reward)  # fmt: skip
            elapsed += time.perf_counter() - start
            tokens += sum(len(s.token_ids) for g in groups for s in g)
            generated += groups
            completions += len(groups) * config.samples_per_prompt
            kept += [g for g in groups if has_signal(g)] if config.dynamic_sampling else groups
            if len(kept) >= wanted:
                break
        kept = kept[:wanted]
        kept = kept[: len(kept) - len(kept) % self.accelerator.num_processes]  # an equal share per process
        every = [s for g in generated for s in g]
        filtered = sum(not has_signal(g) for g in generated) if config.dynamic_sampling else 0
        metrics = {
            "reward": float(np.mean([s.reward for s in every])),
            "accuracy": float(np.mean([s.reward > 0.5 for s in every])),
            "response_length": float(np.mean([len(s.token_ids) for s in every])),
            "truncated_fraction": float(np.mean([s.finish_reason == "length" for s in every])),
            "filtered_groups": filtered,  # no reward signal (dynamic sampling)
            "unused_groups": len(generated) - len(kept) - filtered,  # beyond the batch or an equal share
            "gen_tokens_per_s": tokens / max(elapsed, 1e-9),
            "generate_seconds": elapsed,
            "skipped_long_prompts": self.skipped_long_prompts,
        }
        return kept, metrics, order.cursor, completions

    def my_share(self, groups: list[list[Sample]]) -> tuple[list[Sample], torch.Tensor | None]:
        """This process's groups (every ``num_processes``-th) and, critic-free, their advantages."""
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        advantages = None
        if not self.config.uses_value_model:
            per_group = sequence_advantages(groups, self.config).view(len(groups), -1)
            advantages = per_group[rank::world].flatten()
        return [s for g in groups[rank::world] for s in g], advantages

    # -- 2. scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: TokenBatch, sequence_advantages: torch.Tensor | None) -> dict:
        """Old log-probs, reference KL, values and targets of this process's batch."""
        config = self.config
        from_engine = config.old_logprobs == "engine"
        outputs = TokenOutputs(None, None, None)
        if config.uses_value_model or not from_engine:
            outputs = self._outputs(self.model, batch, config.uses_value_model, with_policy=not from_engine)
        old = batch.engine_logprobs if from_engine else outputs.logprobs
        ref = self._reference_logprobs(batch) if config.kl_coef > 0 else None
        kl = kl_penalty(old, ref, config.kl_estimator) if ref is not None else None
        penalty = config.kl_coef * kl if kl is not None and config.kl_in == "reward" else None
        process_rewards = None
        if self.process_reward_model is not None:
            process_rewards = config.process_reward_coef * self._process_rewards(batch)
        if config.advantage_estimator == "step_gae":
            targets = step_gae_targets(
                batch, outputs.values, config.gamma, config.lam, penalty, process_rewards
            )
        elif config.advantage_estimator == "token_gae":
            targets = token_gae_targets(
                batch, outputs.values, config.gamma, config.lam, penalty, process_rewards
            )
        else:
            targets = sequence_targets(batch, sequence_advantages)
        if config.uses_value_model and config.whiten_advantages:
            targets.advantages = self._whiten(targets.advantages, batch.completion_mask)
        return {"old_logprobs": old, "ref_logprobs": ref, "kl": kl, "targets": targets}

    def _outputs(
        self,
        model,
        batch: TokenBatch,
        with_value: bool,
        with_policy: bool = True,
        entropy_grad: bool | None = None,
    ) -> TokenOutputs:
        """Log-probs, entropy (if ``entropy_grad`` is not None; with a gradient if True) and values.

        One forward pass per :func:`length_groups` group of ``micro_batch_size`` rows: a batch padded
        to its longest row spends much of its compute on padding when response lengths vary. The
        results come back in the batch's row order, so the losses see the batch as one.
        """
        rows, logprobs, entropy, values = [], [], [], []
        width = batch.input_ids.shape[1]
        for group_rows, group in length_groups(batch, self.config.micro_batch_size):
            logits, value = model(input_ids=group.input_ids, attention_mask=group.attention_mask,
                                  with_value=with_value, with_policy=with_policy)  # fmt: skip
            rows.append(group_rows)
            if logits is not None:
                logprobs.append(self._logprobs(logits, group))
                if entropy_grad is not None:
                    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                        entropy.append(entropy_from_logits(self._completion_logits(logits, group)))
            if value is not None:
                values.append(torch.nn.functional.pad(self._values(value), (0, width - value.shape[1])))
        return TokenOutputs(
            *(in_row_order(rows, parts) if parts else None for parts in (logprobs, entropy, values))
        )

    def _logprobs(self, logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Log-probs ``[B, T]`` of the completion tokens under the sampling temperature."""
        shifted = token_logprobs(logits[:, :-1].float(), batch.input_ids[:, 1:], self.config.temperature)
        return shifted.gather(1, batch.completion_positions)

    def _values(self, value_logits: torch.Tensor) -> torch.Tensor:
        value_logits = value_logits.float()
        return torch.sigmoid(value_logits) if self.config.value_activation == "sigmoid" else value_logits

    def _reference_logprobs(self, batch: TokenBatch) -> torch.Tensor:
        if self.reference is None:  # LoRA: the reference is the base model
            policy = self.accelerator.unwrap_model(self.model).policy
            with policy.disable_adapter():
                return self._outputs(self.model, batch, with_value=False).logprobs
        rows, logprobs = [], []
        for group_rows, group in length_groups(batch, self.config.micro_batch_size):
            logits = self.reference(input_ids=group.input_ids, attention_mask=group.attention_mask).logits
            rows.append(group_rows)
            logprobs.append(self._logprobs(logits, group))
        return in_row_order(rows, logprobs)

    def _process_rewards(self, batch: TokenBatch) -> torch.Tensor:
        """The process reward model's step scores ``[B, S]``, read at each step's last token."""
        rows, scores = [], []
        for group_rows, group in length_groups(batch, self.config.micro_batch_size):
            logits = self.process_reward_model(
                input_ids=group.input_ids, attention_mask=group.attention_mask
            ).logits
            rows.append(group_rows)
            scores.append(torch.sigmoid(logits.squeeze(-1).float()).gather(1, group.step_end_positions))
        return in_row_order(rows, scores)

    def _whiten(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance over every process's completion tokens."""
        stats = torch.stack(
            [torch.where(mask, x, 0.0).sum(), torch.where(mask, x * x, 0.0).sum(), mask.sum()]
        )
        if self.accelerator.num_processes > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        total, squares, count = stats.tolist()
        mean = total / max(count, 1)
        std = math.sqrt(max(squares / max(count, 1) - mean * mean, 0.0))
        return torch.where(mask, (x - mean) / (std + 1e-8), 0.0)

    # -- 3. updates --------------------------------------------------------------------------------
    def update(self, number: int, batch: TokenBatch, scores: dict) -> dict:
        config = self.config
        targets: Targets = scores["targets"]
        warmup = number <= config.value_warmup_iterations
        stats: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(config.seed * 7919 + number)
        gap: dict[str, float] = {}
        for _ in range(config.ppo_epochs):
            for chunk in torch.randperm(len(batch), generator=generator).split(config.mini_batch_size):
                part = batch.select(chunk)
                mask = part.completion_mask
                outputs = self._outputs(
                    self.model, part, config.uses_value_model, entropy_grad=config.entropy_coef > 0
                )
                logprobs = outputs.logprobs
                if not gap and config.old_logprobs == "engine" and config.temperature == 1.0:
                    # No forward pass ran before this first update: check the sync on its minibatch.
                    gap = engine_logprob_gap(logprobs.detach(), part.engine_logprobs, mask)
                # Under value warm-up the policy term is weighted 0 (not skipped), so every process
                # runs the same graph and DeepSpeed sees a gradient for every parameter.
                loss_pg, pg = policy_loss(logprobs, scores["old_logprobs"][chunk], targets.advantages[chunk], mask,
                                          config.clip_low, config.clip_high, config.loss_aggregation)  # fmt: skip
                loss = (0.0 if warmup else 1.0) * loss_pg
                step = {"policy_loss": loss_pg.item(), **{k: v.item() for k, v in pg.items()}}
                # Entropy is logged always; it carries a gradient only when it is in the loss.
                entropy = masked_mean(outputs.entropy, mask)
                if config.entropy_coef:
                    loss = loss - config.entropy_coef * entropy
                step["entropy"] = entropy.item()
                if config.kl_coef > 0 and config.kl_in == "loss":
                    kl = kl_penalty(logprobs, scores["ref_logprobs"][chunk], config.kl_estimator)
                    loss = loss + config.kl_coef * aggregate(kl, mask, config.loss_aggregation)
                if outputs.values is not None:
                    positions = (
                        part.step_positions
                        if config.advantage_estimator == "step_gae"
                        else part.completion_positions
                    )
                    new_values = outputs.values.gather(1, positions)
                    clip = config.value_clip or None
                    loss_v, vs = value_loss(new_values, targets.old_values[chunk], targets.returns[chunk],
                                            targets.value_mask[chunk], clip, config.loss_aggregation)  # fmt: skip
                    loss = loss + config.value_coef * loss_v
                    step.update({"value_loss": loss_v.item(), **{k: v.item() for k, v in vs.items()}})
                self.accelerator.backward(loss)
                step["learning_rate"] = self.scheduler.get_last_lr()[0]  # the actor's, for this step
                if config.max_grad_norm > 0 and self.accelerator.state.deepspeed_plugin is None:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
                for key, value in step.items():
                    stats.setdefault(key, []).append(value)
        metrics = {k: float(np.mean(v)) for k, v in stats.items()}
        if config.temperature == 1.0 and config.old_logprobs == "trainer":
            gap = engine_logprob_gap(scores["old_logprobs"], batch.engine_logprobs, batch.completion_mask)
        metrics.update(gap)
        if scores["kl"] is not None:
            metrics["kl"] = masked_mean(scores["kl"], batch.completion_mask).item()
        if targets.returns is not None:
            metrics["explained_variance"] = explained_variance(
                targets.old_values, targets.returns, targets.value_mask
            )
            metrics["value_mean"] = masked_mean(targets.old_values, targets.value_mask).item()
        return self._mean_over_processes(metrics)

    def _completion_logits(self, logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        index = batch.completion_positions[..., None].expand(-1, -1, logits.shape[-1])
        return logits[:, :-1].float().gather(1, index)

    def _mean_over_processes(self, metrics: dict) -> dict:
        """Metrics over every process: the maximum for ``*_max`` keys, the mean for the others."""
        if self.accelerator.num_processes == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
        peaks = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
        means = (values / self.accelerator.num_processes).tolist()
        return {
            k: (p if k.endswith("_max") else m) for k, m, p in zip(keys, means, peaks.tolist(), strict=True)
        }

    def _sum(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        return float(self.accelerator.reduce(torch.tensor(value), reduction="sum"))

    # -- 4. weight sync, evaluation, saving ----------------------------------------------------------
    def policy_weights(self) -> dict[str, torch.Tensor] | None:
        """The actor's full weights (LoRA merged) on the main process; every process must call it."""
        return full_state_dict(self.accelerator.unwrap_model(self.model).policy, self.accelerator)

    def sync_weights(self) -> None:
        """Push the actor's weights into the engine, gathered (ZeRO-3) and sent one layer at a time."""
        policy = self.accelerator.unwrap_model(self.model).policy
        weights = stream_weights(plain_weight_units(policy), self.accelerator)
        if self.engine is not None:
            self.engine.load_weights(weights)
        for _ in weights:  # the other processes take part in every gather
            pass
        self.accelerator.wait_for_everyone()

    def evaluate(self) -> dict:
        """Held-out accuracy, greedy and sampled at the rollout temperature (main process; others wait)."""
        result = {}
        if self.engine is not None:
            indices = list(range(len(self.eval_prompts)))
            greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=self.config.max_new_tokens)
            runs = [("eval_accuracy", greedy)]
            if self.config.eval_samples:
                runs.append(("eval_sampled_accuracy", SamplingConfig(
                    n=self.config.eval_samples, temperature=self.config.temperature, top_p=self.config.top_p,
                    max_new_tokens=self.config.max_new_tokens, seed=self.config.seed)))  # fmt: skip
            for key, sampling in runs:
                groups = sample_groups(self.engine, self.eval_prompts, self.eval_answers, indices, sampling,
                                       self.reward_fn, self.config.reward)  # fmt: skip
                result[key] = float(np.mean([s.reward for g in groups for s in g]))
        self.accelerator.wait_for_everyone()
        return result

    def close(self) -> None:
        """Let a background batch finish, then stop the rollout engine."""
        if self._sampler is not None:
            self._sampler.shutdown(wait=True)
            self._sampler, self._next_rollouts = None, None
        if self.engine is not None:
            self.engine.close()

    def save(self) -> None:
        """Save the actor (and value model) for plain ``from_pretrained``; every process must call it."""
        out = Path(self.config.output_dir)
        unwrapped = self.accelerator.unwrap_model(self.model)
        weights = self.policy_weights()
        if self.accelerator.is_main_process:
            policy = (
                unwrapped.policy.get_base_model()
                if hasattr(unwrapped.policy, "disable_adapter")
                else unwrapped.policy
            )
            policy.save_pretrained(out / "actor", state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(out / "actor")
        if unwrapped.value is not None:
            value_weights = full_state_dict(unwrapped.value, self.accelerator)
            if self.accelerator.is_main_process:
                unwrapped.value.save_pretrained(
                    out / "critic", state_dict=value_weights, safe_serialization=True
                )
                self.tokenizer.save_pretrained(out / "critic")
        self.accelerator.wait_for_everyone()


# What a `llmac ppo` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, TaskConfig, EngineConfig, PPOConfig)


def run_ppo(
    model_config: ModelConfig, task_config: TaskConfig, engine_config: EngineConfig, config: PPOConfig
) -> Path:
    """Train with PPO (see the module docstring); returns the run folder."""
    return PPOTrainer(model_config, task_config, engine_config, config).train()


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, task_config, engine_config, config = parse_config(CONFIG_CLASSES, argv, prog="llmac ppo")
    output = run_ppo(model_config, task_config, engine_config, config)
    end_process_group()
    return output


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
