"""``llmac dapo train``: fit the actor to DAPO's step advantages, offline (no sampling while training).

Top to bottom (:func:`run_dapo_train`):

1. the states of the built dataset get their candidates' values (a frozen step critic's V(s + a_i), or
   the MC values), advantages ``A_i = q_i - mean_j q_j``, and the states whose values span less than
   ``advantage_threshold`` are dropped (counted). The reference policy's summed log-prob of every
   candidate is computed once; all of it is cached in ``<output_dir>/train_data``;
2. each optimizer step takes ``states_per_batch`` states with all their candidates and minimises
   ``1/2 (A / beta - (log pi(a|s) - log pi_ref(a|s)))^2`` (log-probs summed over the step's tokens);
3. metrics go to ``metrics.jsonl`` (``llmac plot``), resumable checkpoints to ``checkpoints/``, the
   final actor to ``actor/`` (plain ``from_pretrained``, LoRA merged).

Runs on one process or under ``accelerate launch`` with a DeepSpeed ZeRO-2/3 config (each process takes
every ``num_processes``-th state of a batch). ``rounds > 1``: round r trains in ``round-<r>/`` on data
rebuilt from round r - 1's actor (pi_ref <- pi).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk

from llmac.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from llmac.config import ModelConfig, parse_config
from llmac.critic.labelling import MCLabelConfig
from llmac.dapo.advantages import candidate_advantages, select_states
from llmac.dapo.build import build_data, is_built, read_build_stats
from llmac.dapo.config import DAPOBuildConfig, DAPOTrainConfig
from llmac.dapo.objective import dapo_loss, step_logprobs
from llmac.data.loading import format_prompt
from llmac.data.tasks import TaskConfig, load_task
from llmac.distributed import (
    configure_deepspeed,
    end_process_group,
    full_state_dict,
    is_main_process,
    make_accelerator,
    mean_over_processes,
    stream_weights,
)
from llmac.engines import EngineConfig, RolloutEngine, build_engine
from llmac.files import write_text_atomically
from llmac.metrics_log import MetricsLog
from llmac.models import load_actor, load_tokenizer, plain_weight_units
from llmac.outputs import finish_output, prepare_output
from llmac.rewards.registry import get_reward_fn
from llmac.rl.batch import Sample, TokenBatch, build_token_batch
from llmac.rl.forward import ForwardPasses, PolicyAndValue
from llmac.rl.sampler import Prompts, SamplerSettings, held_out_accuracy
from llmac.rl.saving import save_trained_model
from llmac.rl.updates import apply_gradients
from llmac.schedules import lr_multiplier
from llmac.steps import join_steps

logger = logging.getLogger(__name__)

TRAIN_DATA = "train_data"


# -- 1. the training data ------------------------------------------------------------------------
def candidate_tokens(tokenizer, question: str, state: Sequence[str], step: str, last: bool,
                     delimiter: str) -> tuple[list[int], list[int]]:  # fmt: skip
    """Token ids of the context (prompt + the state's steps) and of the candidate step.

    A step that goes on keeps its delimiter; a step that ends the solution ends with EOS, as sampled.
    """
    context = format_prompt(tokenizer, question) + (
        join_steps(list(state), delimiter) + delimiter if state else ""
    )
    encode = lambda text: list(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    action = encode(step if last else step + delimiter)
    if last and tokenizer.eos_token_id is not None:
        action.append(tokenizer.eos_token_id)
    return encode(context), action


def candidate_batch(rows: Sequence[dict], tokenizer, delimiter: str) -> TokenBatch:
    """Every candidate of ``rows`` (states) as one padded batch, state by state."""
    samples = []
    for row in rows:
        for step, last in zip(row["candidates"], row["last"], strict=True):
            context, action = candidate_tokens(
                tokenizer, row["question"], row["state"], step, last, delimiter
            )
            samples.append(Sample(row["question_index"], context, action, [len(action) - 1], step, "stop", 0.0,
                                  [0.0] * len(action)))  # fmt: skip
    return build_token_batch(samples, [0.0] * len(samples), tokenizer.pad_token_id)


@torch.no_grad()
def summed_logprobs(model: torch.nn.Module, batch: TokenBatch, micro_batch_size: int) -> torch.Tensor:
    """``log pi(a|s)`` of every candidate of ``batch``, summed over its tokens."""
    outputs = ForwardPasses(micro_batch_size).outputs(PolicyAndValue(model, None), batch, with_value=False)
    return step_logprobs(outputs.logprobs, batch.completion_mask)


def critic_values(critic_path: str, states: Dataset, delimiter: str) -> list[list[float]]:
    """V(s + a_i) of every candidate: the frozen critic's value at the candidate step's end."""
    from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
    from llmac.critic.scoring import score_steps

    critic = load_critic(critic_path)
    if critic_delimiter(critic) != delimiter:
        raise ValueError(
            f"critic {critic_path} reads steps ending with {critic_delimiter(critic)!r}, not {delimiter!r}"
        )
    tokenizer = load_critic_tokenizer(critic_path)
    questions, responses, shape = [], [], []
    for row in states:
        shape.append(len(row["candidates"]))
        for step in row["candidates"]:
            questions.append(row["question"])
            responses.append([*row["state"], step])
    flat = [values[-1] for values in score_steps(critic, tokenizer, questions, responses, delimiter)]
    out, start = [], 0
    for size in shape:
        out.append(flat[start : start + size])
        start += size
    return out


def prepare_train_data(states: Dataset, actor_path: str, tokenizer, config: DAPOTrainConfig, delimiter: str,
                       dtype: str) -> tuple[Dataset, dict]:  # fmt: skip
    """The states that train, with ``values``, ``advantages`` and ``ref_logprobs`` columns; the counts."""
    values = (
        critic_values(config.critic, states, delimiter)
        if config.critic
        else [list(v) for v in states["mc_values"]]
    )
    selection = select_states(values, config.advantage_threshold)
    kept = states.select(selection.kept)
    kept_values = [values[i] for i in selection.kept]
    kept = kept.add_column("values", kept_values)
    kept = kept.add_column("advantages", [candidate_advantages(v) for v in kept_values])
    reference = load_actor(actor_path, dtype).eval()
    ref: list[list[float]] = []
    for start in range(0, len(kept), 16):
        rows = kept.select(range(start, min(start + 16, len(kept)))).to_list()
        flat = summed_logprobs(
            reference, candidate_batch(rows, tokenizer, delimiter), config.micro_batch_size
        )
        flat, at = flat.tolist(), 0
        for row in rows:
            ref.append(flat[at : at + len(row["candidates"])])
            at += len(row["candidates"])
    kept = kept.add_column("ref_logprobs", ref)
    counts = {"states_in": len(states), "states_kept": len(selection.kept),
              "states_single_candidate": selection.single_candidate, "states_all_equal": selection.all_equal,
              "states_below_threshold": selection.below_threshold, "value_source": config.critic or "mc"}  # fmt: skip
    return kept, counts


def batches_of_epoch(num_states: int, states_per_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The states of each optimizer step of ``epoch``, in a seeded order (the same after a resume)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_states).tolist()
    return [order[i : i + states_per_batch] for i in range(0, num_states, states_per_batch)]


# -- 2. the training run ---------------------------------------------------------------------------
class DAPOTrainer:
    """One round: the actor, its optimizer and the cached training data, stepped by :meth:`train`."""

    def __init__(self, model_config: ModelConfig, config: DAPOTrainConfig, data_dir: str, delimiter: str,
                 evaluate=None) -> None:  # fmt: skip
        self.config, self.delimiter, self.evaluate_fn = config, delimiter, evaluate
        self.accelerator = make_accelerator()
        configure_deepspeed(self.accelerator, config.micro_batch_size, config.max_grad_norm)
        torch.manual_seed(config.shuffle_seed)
        actor_path = model_config.model_name_or_path
        self.tokenizer = load_tokenizer(actor_path)
        out = Path(config.output_dir)
        cache = out / TRAIN_DATA
        if self.accelerator.is_main_process and not (cache / "dataset_info.json").is_file():
            from llmac.rollouts import save_dataset_atomically

            states = load_from_disk(str(data_dir))
            data, counts = prepare_train_data(
                states, actor_path, self.tokenizer, config, delimiter, model_config.dtype
            )
            counts["build_completions"] = read_build_stats(data_dir)["completions"]
            write_text_atomically(out / "train_data_counts.json", json.dumps(counts, indent=2) + "\n")
            save_dataset_atomically(data, cache, "dapo train")
        self.accelerator.wait_for_everyone()
        self.data = load_from_disk(str(cache))
        self.counts = json.loads((out / "train_data_counts.json").read_text())
        if len(self.data) == 0:
            raise ValueError(f"no state of {data_dir} has candidates whose values span >= "
                             f"{config.advantage_threshold}: nothing to train on ({self.counts})")  # fmt: skip
        self.steps_per_epoch = math.ceil(len(self.data) / config.states_per_batch)
        self.total_steps = config.num_epochs * self.steps_per_epoch
        policy = load_actor(actor_path, model_config.dtype, model_config.lora_settings())
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(config.lr_scheduler_type, config.warmup_steps, self.total_steps)
        )
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.model, self.optimizer = self.accelerator.prepare(PolicyAndValue(policy, None), optimizer)
        self.model.eval()  # no dropout: the log-ratio at the start is exactly 0
        self.log = MetricsLog(out, enabled=self.accelerator.is_main_process)
        self.start = 0
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None:
            self.start = load_checkpoint(self.accelerator, checkpoint)["iteration"]
            self.log.truncate_after(self.start)
            logger.info("resumed from %s (step %d)", checkpoint, self.start)

    def policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model).policy

    def train(self) -> Path:
        config, out = self.config, Path(self.config.output_dir)
        if self.start == 0 and config.eval_every:
            self.log.write(
                {"iteration": 0, "completions": self.counts["build_completions"], **self.evaluate()}
            )
        from tqdm.auto import tqdm

        bar = tqdm(range(self.start, self.total_steps), initial=self.start, total=self.total_steps, desc="dapo",
                   disable=not (config.progress and self.accelerator.is_main_process))  # fmt: skip
        for step in bar:
            epoch, index = divmod(step, self.steps_per_epoch)
            states = batches_of_epoch(len(self.data), config.states_per_batch, config.shuffle_seed, epoch)[
                index
            ]
            started = time.perf_counter()
            metrics = self.update(states)
            number = step + 1
            metrics.update(iteration=number, epoch=epoch, completions=self.counts["build_completions"],
                           iteration_seconds=time.perf_counter() - started)  # fmt: skip
            if config.eval_every and (number % config.eval_every == 0 or number == self.total_steps):
                metrics.update(self.evaluate())
            self.log.write(metrics)
            if config.checkpoint_every and number % config.checkpoint_every == 0:
                save_checkpoint(self.accelerator, out, number, {}, config.keep_checkpoints)
        self.save()
        return out

    def update(self, states: list[int]) -> dict:
        """One optimizer step on this process's share of ``states`` (all candidates of each)."""
        accelerator, config = self.accelerator, self.config
        mine = states[accelerator.process_index :: accelerator.num_processes] or states[:1]
        rows = self.data.select(mine).to_list()
        batch = candidate_batch(rows, self.tokenizer, self.delimiter)
        advantages = torch.tensor([a for r in rows for a in r["advantages"]], dtype=torch.float32)
        ref = torch.tensor([x for r in rows for x in r["ref_logprobs"]], dtype=torch.float32)
        outputs = ForwardPasses(config.micro_batch_size).outputs(self.model, batch, with_value=False)
        logprobs = step_logprobs(outputs.logprobs, batch.completion_mask)
        losses = dapo_loss(logprobs, ref, advantages, config.beta)
        learning_rate = apply_gradients(
            losses.mean(), accelerator, self.model, self.optimizer, self.scheduler, config.max_grad_norm
        )
        log_ratio = (logprobs - ref).detach()
        positive, negative = advantages > 0, advantages < 0
        metrics = {
            "loss": losses.mean().item(),
            "log_ratio": log_ratio.mean().item(),
            "log_ratio_positive": log_ratio[positive].mean().item() if positive.any() else 0.0,
            "log_ratio_negative": log_ratio[negative].mean().item() if negative.any() else 0.0,
            "target_abs": (advantages.abs() / config.beta).mean().item(),
            "candidates": float(len(advantages)),
            "learning_rate": learning_rate,
        }
        return mean_over_processes(metrics, accelerator)

    def evaluate(self) -> dict:
        """Held-out accuracy of the current weights (main process; the others take part in the gather)."""
        weights = stream_weights(plain_weight_units(self.policy()), self.accelerator)
        result = self.evaluate_fn(weights) if self.evaluate_fn is not None else {}
        for _ in weights:
            pass
        self.accelerator.wait_for_everyone()
        return result

    def save(self) -> None:
        """The actor (LoRA merged) for plain ``from_pretrained``, swapped in whole; every process calls it."""
        weights = full_state_dict(self.policy(), self.accelerator)
        actor = Path(self.config.output_dir) / "actor"
        save_trained_model(self.policy(), weights, self.tokenizer, actor, "dapo train", self.accelerator)
        self.accelerator.wait_for_everyone()


class HeldOutEvaluation:
    """Held-out accuracy through a rollout engine that is given the trainer's weights first."""

    def __init__(self, engine: RolloutEngine | None, tokenizer, task: TaskConfig, build: DAPOBuildConfig,
                 config: DAPOTrainConfig) -> None:  # fmt: skip
        self.engine = engine
        self.held_out = Prompts.tokenize(tokenizer, load_task(task, "eval"), 10**9)
        self.reward_fn = get_reward_fn(build.reward)
        self.settings = SamplerSettings(
            prompts_per_iteration=1, samples_per_prompt=1, temperature=build.solution_temperature or 1.0,
            top_p=1.0, max_new_tokens=build.solution_max_new_tokens, seed=config.shuffle_seed, reward=build.reward,
            dynamic_sampling=False, max_sampling_rounds=1, async_rollouts=False, checkpoint_every=0,
            num_iterations=1, eval_samples=config.eval_samples)  # fmt: skip

    def __call__(self, weights) -> dict:
        if self.engine is None:
            return {}
        self.engine.load_weights(weights)
        return held_out_accuracy(self.engine, self.held_out, self.settings, self.reward_fn)


# -- 3. rounds -------------------------------------------------------------------------------------
def run_dapo_train(model_config: ModelConfig, config: DAPOTrainConfig, build: DAPOBuildConfig, mc: MCLabelConfig,
                   task: TaskConfig, engine_config: EngineConfig, engine: RolloutEngine | None = None) -> Path:  # fmt: skip
    """Every round (build the data when it is not there, train); returns the last round's run folder.

    ``engine``: a running engine holding the actor's weights, used for the builds after round 1 and for
    evaluation (the caller's, left running); by default one is started when needed.
    """
    sources = [model_config.model_name_or_path, config.critic, build.data_dir]
    work = prepare_output(config.output_dir, "dapo train", build.overwrite, sources, resumable=lambda _: True)
    actor = model_config.model_name_or_path
    main = is_main = is_main_process()
    owns_engine = engine is None
    run = work
    try:
        for round_ in range(1, config.rounds + 1):
            run = work if config.rounds == 1 else work / f"round-{round_}"
            data_dir = build.data_dir if round_ == 1 else str(run / "data")
            if (run / "actor" / "config.json").is_file():
                actor = str(run / "actor")
                continue  # a finished round of a resumed run
            if is_main and not is_built(data_dir):
                if engine is None:
                    engine = build_engine(actor, engine_config)
                build_data(actor, replace(build, data_dir=data_dir, critic_labels_dir=None, overwrite=False), mc,
                           task, engine_config, engine, progress=config.progress)  # fmt: skip
            if main and config.eval_every and engine is None:
                engine = build_engine(actor, engine_config)
            tokenizer = load_tokenizer(actor)
            evaluation = HeldOutEvaluation(engine if main else None, tokenizer, task, build, config)
            round_config = replace(config, output_dir=str(run))
            DAPOTrainer(replace(model_config, model_name_or_path=actor), round_config, data_dir,
                        engine_config.delimiter, evaluation).train()  # fmt: skip
            actor = str(run / "actor")
            if engine is not None and round_ < config.rounds:
                engine.load_weights(dict(load_actor(actor, "float32").state_dict()))
    finally:
        if owns_engine and engine is not None:
            engine.close()
    finish_output(work, config.output_dir, "dapo train")
    return Path(config.output_dir) if config.rounds == 1 else Path(config.output_dir) / run.name


# What a `llmac dapo train` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, DAPOTrainConfig, DAPOBuildConfig, MCLabelConfig, TaskConfig, EngineConfig)


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, config, build, mc, task, engine_config = parse_config(
        CONFIG_CLASSES, argv, prog="llmac dapo train"
    )
    output = run_dapo_train(model_config, config, build, mc, task, engine_config)
    end_process_group()
    print(f"llmac dapo train: actor in {(output / 'actor').resolve()}")
    return output
