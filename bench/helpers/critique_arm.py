"""The bench's critique arms (issue 16): a generative critic (``--critique_model``, an ``llmac critique sft``
or ``train`` output) working with the SFT'd actor on the shared engine.

- ``critique_refine`` (test time, nothing trained): the actor's held-out solutions (greedy, and
  ``eval_samples`` sampled ones) get one critique -> refine round (:func:`llmac.critique.refine.critique_and_refine`,
  regenerating greedily from the first flagged step). The curve's first point is the actor alone, as for
  every arm; its second is the accuracy after the round, at the completions the critiques and the
  refinements cost (the solutions themselves are the evaluation's, as for every arm).
- ``critique_self_train``: ``rounds`` iterations of critique-in-the-loop self-training
  (:mod:`llmac.critique.self_training`): each spends its share of the arm's budget on fresh RL problems,
  ``chunk`` at a time (every solution, critique and refinement charged; the last chunk may overshoot,
  and the curve shows the true count), keeps the correct originals or else the correct refinements,
  SFTs the actor on them (``llmac sft``'s training), puts it into the engine and evaluates it
  (:func:`llmac.rl.sampler.held_out_accuracy`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from datasets import concatenate_datasets
from trl import SFTConfig

from llmac.critique.refine import RefineConfig, critique_and_refine
from llmac.critique.self_training import SelfTrainConfig, collect_kept, load_actor_weights, sft_on_kept
from llmac.data.loading import format_prompt
from llmac.data.tasks import load_task
from llmac.engines import SamplingConfig, build_engine
from llmac.evaluation import direct_answer_share
from llmac.models import load_tokenizer
from llmac.rewards.registry import get_reward_fn
from llmac.rl.sampler import Prompts, SamplerSettings, held_out_accuracy
from llmac.rollouts import save_dataset_atomically

# The critic's settings on the testbed (the compact format of `llmac critique sft`'s tiny recipe).
CRITIQUE_FORMAT = "compact"
CRITIQUE_MAX_NEW_TOKENS = 128
# Self-training's settings (the recipe's PPO fields give sampling, reward, seed and budget).
ROUNDS = 2
CHUNK = 32  # problems per collection call
SFT = {"num_train_epochs": 2, "per_device_train_batch_size": 64, "learning_rate": 3e-4,
       "lr_scheduler_type": "cosine", "warmup_steps": 5, "weight_decay": 0.0, "max_length": 128}  # fmt: skip


def _held_out(model_config, task_config, ppo):
    """The held-out rows the evaluation keeps (prompts within ``max_prompt_length``) and their prompts."""
    tokenizer = load_tokenizer(model_config.model_name_or_path)
    rows = load_task(task_config, "eval")
    short = [
        i
        for i, q in enumerate(rows["question"])
        if len(tokenizer(format_prompt(tokenizer, q), add_special_tokens=False)["input_ids"])
        <= ppo.max_prompt_length
    ]
    rows = rows.select(short)
    return rows, Prompts.tokenize(tokenizer, rows, ppo.max_prompt_length)


def run_critique_refine_arm(configs: tuple, engine, critique_model: str) -> dict:
    """One critique -> refine round on the held-out solutions of the engine's actor; the bench's result."""
    model_config, task_config, engine_config, ppo = configs
    reward_fn, settings = get_reward_fn(ppo.reward), SamplerSettings.of(ppo)
    rows, held_out = _held_out(model_config, task_config, ppo)
    started = time.perf_counter()
    base = held_out_accuracy(engine, held_out, settings, reward_fn)
    eval_seconds = time.perf_counter() - started
    refine = RefineConfig(mode="regenerate", rounds=1, critique_format=CRITIQUE_FORMAT,
                          critique_max_new_tokens=CRITIQUE_MAX_NEW_TOKENS, refine_max_new_tokens=ppo.max_new_tokens,
                          seed=ppo.seed)  # fmt: skip
    runs = [("eval", SamplingConfig(n=1, temperature=0.0, max_new_tokens=ppo.max_new_tokens))]
    if ppo.eval_samples:  # the same sampled solutions held_out_accuracy scores
        runs.append(("eval_sampled", SamplingConfig(n=ppo.eval_samples, temperature=ppo.temperature, top_p=ppo.top_p,
                                                    max_new_tokens=ppo.max_new_tokens, seed=ppo.seed)))  # fmt: skip
    point, completions, train_seconds = {}, 0, 0.0
    critic = build_engine(critique_model, engine_config)
    try:
        for key, sampling in runs:
            groups = engine.generate(held_out.ids, sampling)
            started = time.perf_counter()
            n = sampling.n
            turns = critique_and_refine(
                engine, critic, [q for q in rows["question"] for _ in range(n)], [c.text for g in groups for c in g],
                refine, [str(a) for a in rows["answer"] for _ in range(n)], reward_fn,
            )  # fmt: skip
            train_seconds += time.perf_counter() - started
            completions += len(turns) + sum(list(turns["refined"]))
            point[f"{key}_accuracy"] = float(np.mean(list(turns["refined_correct"])))
            point[f"{key}_direct_answer_share"] = direct_answer_share(list(turns["refined_solution"]))
            point[f"{key}_accuracy_before_refine"] = float(np.mean(list(turns["correct"])))
            point[f"{key}_refined_share"] = float(np.mean(list(turns["refined"])))
    finally:
        critic.close()
    if abs(point["eval_accuracy_before_refine"] - base["eval_accuracy"]) > 1e-9:
        raise RuntimeError(
            "critique_refine: the greedy solutions it refined are not the ones the evaluation scored"
        )
    return {"curve": [{"completions": 0, **base}, {"completions": completions, **point}], "completions": completions,
            "learning_rates": [], "setup_seconds": 0.0, "train_seconds": train_seconds,
            "eval_seconds": eval_seconds}  # fmt: skip


def sft_args(output_dir: Path, seed: int) -> SFTConfig:
    """The arm's SFT settings (:data:`SFT`), float32 on CPU."""
    return SFTConfig(output_dir=str(output_dir), report_to="none", bf16=torch.cuda.is_available(), save_strategy="no",
                     logging_steps=10, disable_tqdm=True, seed=seed, **SFT)  # fmt: skip


def run_critique_self_train_arm(
    configs: tuple, engine, critique_model: str, rounds: int = ROUNDS, chunk: int = CHUNK
) -> dict:
    """Self-training from the engine's current weights (the SFT'd actor); the bench's result dict."""
    model_config, task_config, engine_config, ppo = configs
    budget = ppo.num_iterations * ppo.prompts_per_iteration * ppo.samples_per_prompt
    out = Path(ppo.output_dir)
    reward_fn, settings = get_reward_fn(ppo.reward), SamplerSettings.of(ppo)
    _, held_out = _held_out(model_config, task_config, ppo)
    config = SelfTrainConfig(actor=str(model_config.model_name_or_path), critic=str(critique_model),
                             samples_per_problem=ppo.samples_per_prompt, solution_temperature=ppo.temperature,
                             solution_max_new_tokens=ppo.max_new_tokens, answer_reward=ppo.reward,
                             critique_format=CRITIQUE_FORMAT, critique_max_new_tokens=CRITIQUE_MAX_NEW_TOKENS,
                             refine_max_new_tokens=ppo.max_new_tokens)  # fmt: skip
    rows = load_task(task_config, "rl").shuffle(seed=ppo.seed)
    started = time.perf_counter()
    curve = [{"completions": 0, **held_out_accuracy(engine, held_out, settings, reward_fn)}]
    eval_seconds = time.perf_counter() - started
    actor = Path(model_config.model_name_or_path)
    completions, cursor, train_seconds, per_round = 0, 0, 0.0, []
    critic = build_engine(critique_model, engine_config)
    try:
        for round_ in range(1, rounds + 1):
            started = time.perf_counter()
            parts, spent = [], 0
            while spent < budget / rounds and cursor < len(rows):
                problems = rows.select(range(cursor, min(cursor + chunk, len(rows))))
                seed = ppo.seed * 1_000_003 + cursor * ppo.samples_per_prompt
                part = collect_kept(
                    engine, critic, problems["question"], problems["answer"], config, reward_fn, seed
                )
                spent += part.completions
                cursor += len(problems)
                parts.append(part)
            completions += spent
            folder = out / f"round-{round_}"
            save_dataset_atomically(
                concatenate_datasets([p.turns for p in parts]), folder / "turns", overwrite=True
            )
            kept_dir = save_dataset_atomically(concatenate_datasets([p.kept for p in parts]), folder / "kept",
                                               overwrite=True)  # fmt: skip
            # the last round's actor is the run's (`run/actor`, what the bench checks before reusing a result)
            target = out / "actor" if round_ == rounds else folder / "actor"
            if sum(p.stats["kept"] for p in parts):  # nothing kept: the actor stays as it is
                actor = sft_on_kept(replace(model_config, model_name_or_path=str(actor)), kept_dir,
                                    sft_args(target, ppo.seed), target)  # fmt: skip
                load_actor_weights(engine, actor)
            train_seconds += time.perf_counter() - started
            stats = {key: sum(p.stats[key] for p in parts)
                     for key in ("problems", "solutions", "critiques", "refinements", "kept", "kept_original", "kept_refined")}  # fmt: skip
            per_round.append({"round": round_, "completions": spent, **stats})
            started = time.perf_counter()
            curve.append(
                {"completions": completions, **held_out_accuracy(engine, held_out, settings, reward_fn)}
            )
            eval_seconds += time.perf_counter() - started
    finally:
        critic.close()
    return {"curve": curve, "completions": completions, "learning_rates": [], "setup_seconds": 0.0,
            "train_seconds": train_seconds, "eval_seconds": eval_seconds, "rounds": per_round}  # fmt: skip
