"""Sampling for an online RL loop: prompts in a seeded order, groups of verified completions from the
rollout engine (on the main process), dynamic sampling, sampling the next batch ahead on a thread,
each process's share, and the held-out evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace

import numpy as np
import torch.distributed as dist

from llmac.data.loading import format_prompt
from llmac.engines.base import Completion, RolloutEngine, SamplingConfig
from llmac.errors import ConfigError
from llmac.evaluation import direct_answer_share
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn
from llmac.rl.batch import Sample, has_signal

logger = logging.getLogger(__name__)


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


@dataclass
class Prompts:
    """Chat-templated prompts as token ids, with their gold answers."""

    ids: list[list[int]]
    answers: list[str]
    skipped: int = 0  # prompts left out for being longer than the cap

    @classmethod
    def tokenize(cls, tokenizer, rows, max_length: int) -> Prompts:
        """The questions of ``rows`` (``question``, ``answer``), without those over ``max_length`` tokens."""
        ids, answers, skipped = [], [], 0
        for question, answer in zip(rows["question"], rows["answer"], strict=True):
            tokens = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
            if len(tokens) > max_length:
                skipped += 1
                continue
            ids.append(list(tokens))
            answers.append(answer)
        if skipped:
            logger.warning("skipped %d prompts longer than max_prompt_length=%d", skipped, max_length)
        if not ids:
            raise ConfigError(f"every prompt is longer than max_prompt_length={max_length} tokens")
        return cls(ids, answers, skipped)


def sample_groups(
    engine: RolloutEngine,
    prompts: Prompts,
    indices: Sequence[int],
    sampling: SamplingConfig,
    reward_fn: RewardFn,
    reward_name: str,
) -> list[list[Sample]]:
    """``sampling.n`` verified samples for each prompt ``prompts.ids[i]``, ``i`` in ``indices``."""
    prompt_ids = [prompts.ids[i] for i in indices]
    groups: list[list[Completion]] = engine.generate(prompt_ids, sampling)
    texts = [c.text for group in groups for c in group]
    golds = [prompts.answers[i] for i, group in zip(indices, groups, strict=True) for _ in group]
    rewards = iter(verify(reward_fn, texts, golds, reward_name))
    return [
        [
            Sample(
                i,
                list(ids),
                list(c.token_ids),
                list(c.step_ends),
                c.text,
                c.finish_reason,
                next(rewards),
                list(c.logprobs),
            )  # fmt: skip
            for c in group
        ]
        for i, ids, group in zip(indices, prompt_ids, groups, strict=True)
    ]


@dataclass(frozen=True)
class SamplerSettings:
    """What the sampler reads of a pipeline's config (the fields of the same names)."""

    prompts_per_iteration: int
    samples_per_prompt: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    reward: str
    dynamic_sampling: bool
    max_sampling_rounds: int
    async_rollouts: bool
    checkpoint_every: int
    num_iterations: int
    eval_samples: int

    @classmethod
    def of(cls, config) -> SamplerSettings:
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def held_out_accuracy(engine: RolloutEngine, held_out: Prompts, settings: SamplerSettings,
                      reward_fn: RewardFn) -> dict[str, float]:  # fmt: skip
    """Accuracy and direct-answer share on every held-out prompt: one greedy completion each
    (``eval_*``) and, if ``settings.eval_samples``, that many at the rollout temperature (``eval_sampled_*``)."""
    indices = list(range(len(held_out.ids)))
    runs = [("eval", SamplingConfig(n=1, temperature=0.0, max_new_tokens=settings.max_new_tokens))]
    if settings.eval_samples:
        runs.append(("eval_sampled", SamplingConfig(
            n=settings.eval_samples, temperature=settings.temperature, top_p=settings.top_p,
            max_new_tokens=settings.max_new_tokens, seed=settings.seed)))  # fmt: skip
    result = {}
    for key, sampling in runs:
        groups = sample_groups(engine, held_out, indices, sampling, reward_fn, settings.reward)
        samples = [s for g in groups for s in g]
        result[f"{key}_accuracy"] = float(np.mean([s.reward for s in samples]))
        result[f"{key}_direct_answer_share"] = direct_answer_share([s.text for s in samples])
    return result


class Sampler:
    """Batches of verified groups for each iteration, sampled on the main process and shared by all."""

    def __init__(self, settings: SamplerSettings, accelerator, engine: RolloutEngine | None,
                 train: Prompts, held_out: Prompts, reward_fn: RewardFn, owns_engine: bool = True) -> None:  # fmt: skip
        self.settings, self.accelerator, self.engine = settings, accelerator, engine
        self.owns_engine = owns_engine  # False: the caller's engine, left running by close()
        self.train, self.held_out, self.reward_fn = train, held_out, reward_fn
        self.order = PromptOrder(len(train.ids), settings.seed)
        self.completions = 0  # generated so far, filtered groups included
        # async_rollouts: the main process samples the next batch on a background thread.
        self._thread: ThreadPoolExecutor | None = None
        self._next: Future | None = None

    def state(self) -> dict:
        return {"prompt_cursor": self.order.cursor, "completions": self.completions}

    def load_state(self, state: dict) -> None:
        self.order.cursor, self.completions = state["prompt_cursor"], state["completions"]

    def rollouts(self, number: int) -> tuple[list[list[Sample]], dict]:
        """Sampled, verified groups for iteration ``number``, the same on every process."""
        payload = [None]
        if self.accelerator.is_main_process:
            if self._next is not None:  # sampled during the previous iteration
                payload = [self._next.result()]
                self._next = None
            else:
                payload = [self.sample_batch(number, self.order.cursor, self.completions)]
        if self.accelerator.num_processes > 1:
            dist.broadcast_object_list(payload, src=0)
        groups, metrics, cursor, completions = payload[0]
        self.order.cursor, self.completions = cursor, completions
        return groups, metrics

    def share(self, groups: Sequence) -> Sequence:
        """This process's share of ``groups`` (a list or a tensor, one entry per group): every ``num_processes``-th."""
        return groups[self.accelerator.process_index :: self.accelerator.num_processes]

    def sample_ahead(self, number: int) -> None:
        """Under ``async_rollouts``, start sampling iteration ``number + 1``'s batch in the background.

        The engine still holds the weights that sampled this iteration, so the next batch is one update
        behind. Not done before a checkpoint (the resumed run samples that batch from the saved weights
        and must see the same one) nor after the last iteration.
        """
        settings = self.settings
        checkpointing = settings.checkpoint_every and number % settings.checkpoint_every == 0
        if not (settings.async_rollouts and self.engine is not None) or checkpointing:
            return
        if number >= settings.num_iterations:
            return
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmac-rollouts")
        self._next = self._thread.submit(self.sample_batch, number + 1, self.order.cursor, self.completions)

    def wait(self) -> float:
        """Block until a background batch is sampled (the engine must be idle to take new weights)."""
        if self._next is None:
            return 0.0
        start = time.perf_counter()
        self._next.exception()  # waits; an error is raised when the batch is taken
        return time.perf_counter() - start

    def sample_batch(self, number: int, cursor: int, completions: int):
        """Iteration ``number``'s groups, from prompt ``cursor`` on, with their metrics, the new cursor
        and completion count; touches no state (it may run on the sampler thread while training)."""
        settings = self.settings
        order = PromptOrder(self.order.size, self.order.seed, cursor)
        wanted, n = settings.prompts_per_iteration, settings.samples_per_prompt
        sampling = SamplingConfig(n=n, temperature=settings.temperature, top_p=settings.top_p,
                                  max_new_tokens=settings.max_new_tokens)  # fmt: skip
        kept, generated, tokens, elapsed = [], [], 0, 0.0
        rounds = settings.max_sampling_rounds if settings.dynamic_sampling else 1
        for round_ in range(rounds):
            indices = order.take(wanted)
            start = time.perf_counter()
            # Disjoint seeds per (iteration, round): the engine gives sample k of prompt i seed + i*n + k.
            seed = settings.seed * 1_000_000_007 + (number * 64 + round_) * wanted * n
            groups = sample_groups(self.engine, self.train, indices, replace(sampling, seed=seed),
                                   self.reward_fn, settings.reward)  # fmt: skip
            elapsed += time.perf_counter() - start
            tokens += sum(len(s.token_ids) for g in groups for s in g)
            generated += groups
            completions += len(groups) * n
            kept += [g for g in groups if has_signal(g)] if settings.dynamic_sampling else groups
            if len(kept) >= wanted:
                break
        kept = kept[:wanted]
        kept = kept[: len(kept) - len(kept) % self.accelerator.num_processes]  # an equal share per process
        every = [s for g in generated for s in g]
        filtered = sum(not has_signal(g) for g in generated) if settings.dynamic_sampling else 0
        metrics = {
            "reward": float(np.mean([s.reward for s in every])),
            "accuracy": float(np.mean([s.reward > 0.5 for s in every])),
            "response_length": float(np.mean([len(s.token_ids) for s in every])),
            "truncated_fraction": float(np.mean([s.finish_reason == "length" for s in every])),
            "filtered_groups": filtered,  # no reward signal (dynamic sampling)
            "unused_groups": len(generated) - len(kept) - filtered,  # beyond the batch or an equal share
            "gen_tokens_per_s": tokens / max(elapsed, 1e-9),
            "generate_seconds": elapsed,
            "skipped_long_prompts": self.train.skipped,
        }
        return kept, metrics, order.cursor, completions

    def evaluate(self) -> dict:
        """Held-out accuracy, greedy and sampled at the rollout temperature (main process; others wait)."""
        result = {}
        if self.engine is not None:
            result = held_out_accuracy(self.engine, self.held_out, self.settings, self.reward_fn)
        self.accelerator.wait_for_everyone()
        return result

    def close(self) -> None:
        """Let a background batch finish, then stop the rollout engine (if it is the sampler's own)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread, self._next = None, None
        if self.engine is not None and self.owns_engine:
            self.engine.close()
