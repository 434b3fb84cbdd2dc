"""The bench's DAPO arm (Direct Advantage Policy Optimization, Skywork arXiv 2412.18279; not ByteDance's
DAPO): ``rounds`` rounds of build (solutions + MC values from the current actor on the shared engine) and
offline training, within the same budget of generated completions as the other arms.

Each round builds from fresh RL questions, ``chunk`` at a time, until it has spent its share of the budget
(every completion counts: the solutions and every MC rollout; the last chunk may go past the share, and
the curve shows the true count). After each round the trained actor goes into the engine (pi_ref <- pi)
and is evaluated like every arm (:func:`llmac.rl.sampler.held_out_accuracy`).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from datasets import concatenate_datasets

from llmac.critic.labelling import MCLabelConfig
from llmac.dapo.build import save_states, states_of, value_questions
from llmac.dapo.config import DAPOBuildConfig, DAPOTrainConfig
from llmac.dapo.trainer import DAPOTrainer
from llmac.data.tasks import load_task
from llmac.models import load_actor, load_tokenizer
from llmac.rewards.registry import get_reward_fn
from llmac.rl.sampler import Prompts, SamplerSettings, held_out_accuracy

# DAPO's own settings on the testbed (the recipe's PPO fields give sampling, lr, reward and budget).
ROUNDS = 2
KEEP_SOLUTIONS = 6
MC_ROLLOUTS = 8  # 4 ends at 52.3% (3 seeds); 8 gives round 1 58.3% on seed 0 (settings search, README)
TRAIN = {"beta": 0.1, "advantage_threshold": 0.1, "num_epochs": 2, "states_per_batch": 16,
         "micro_batch_size": 64, "lr_scheduler_type": "cosine"}  # fmt: skip


def run_dapo_arm(configs: tuple, engine, critic: str | None, rounds: int = ROUNDS, chunk: int = 32) -> dict:
    """DAPO from the engine's current weights (the SFT'd actor); the bench's result dict."""
    model_config, task_config, engine_config, ppo = configs
    budget = ppo.num_iterations * ppo.prompts_per_iteration * ppo.samples_per_prompt
    out = Path(ppo.output_dir)
    reward_fn = get_reward_fn(ppo.reward)
    settings = SamplerSettings.of(ppo)
    held_out = Prompts.tokenize(load_tokenizer(model_config.model_name_or_path), load_task(task_config, "eval"),
                                ppo.max_prompt_length)  # fmt: skip
    build = DAPOBuildConfig(num_solutions=ppo.samples_per_prompt,
                            keep_solutions=min(KEEP_SOLUTIONS, ppo.samples_per_prompt),
                            solution_temperature=ppo.temperature, solution_max_new_tokens=ppo.max_new_tokens,
                            questions_per_shard=chunk, value_all_steps=False, reward=ppo.reward)  # fmt: skip
    mc = MCLabelConfig(num_rollouts=MC_ROLLOUTS, temperature=ppo.temperature, top_p=ppo.top_p,
                       max_new_tokens=ppo.max_new_tokens)  # fmt: skip
    rows = load_task(task_config, "rl").shuffle(seed=ppo.seed)
    started = time.perf_counter()
    curve = [{"completions": 0, **held_out_accuracy(engine, held_out, settings, reward_fn)}]
    eval_seconds = time.perf_counter() - started
    actor, completions, cursor, train_seconds, per_round, learning_rates = (
        model_config.model_name_or_path,
        0,
        0,
        0.0,
        [],
        [],
    )
    for round_ in range(1, rounds + 1):
        started = time.perf_counter()
        parts, spent = [], 0
        while spent < budget / rounds and cursor < len(rows):
            questions = rows.select(range(cursor, min(cursor + chunk, len(rows))))
            seed = ppo.seed * 1_000_003 + cursor * ppo.samples_per_prompt
            part = value_questions(
                engine, questions, build, replace(mc, seed=seed), reward_fn, progress=False
            )
            spent += sum(part["sampled"]) + sum(part["mc_rollouts"])
            cursor += len(questions)
            parts.append(part)
        completions += spent
        states, stats = states_of(concatenate_datasets(parts))
        data_dir = save_states(states, stats, out / f"round-{round_}" / "data", overwrite=True)
        config = DAPOTrainConfig(output_dir=str(out / f"round-{round_}" / "run"), critic=critic,
                                 shuffle_seed=ppo.seed, learning_rate=ppo.learning_rate, progress=False, **TRAIN)  # fmt: skip
        run = DAPOTrainer(replace(model_config, model_name_or_path=str(actor)), config, str(data_dir),
                          engine_config.delimiter).train()  # fmt: skip
        actor = run / "actor"
        engine.load_weights(dict(load_actor(actor, "float32").state_dict()))
        train_seconds += time.perf_counter() - started
        metrics = [
            json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()
        ]
        learning_rates += [m["learning_rate"] for m in metrics]
        counts = json.loads((run / "train_data_counts.json").read_text())
        per_round.append({"round": round_, "completions": spent, "questions": len(states.unique("question_index"))
                          if len(states) else 0, **stats, **counts})  # fmt: skip
        started = time.perf_counter()
        curve.append({"completions": completions, **held_out_accuracy(engine, held_out, settings, reward_fn)})
        eval_seconds += time.perf_counter() - started
    return {"curve": curve, "completions": completions, "learning_rates": learning_rates, "setup_seconds": 0.0,
            "train_seconds": train_seconds, "eval_seconds": eval_seconds, "rounds": per_round}  # fmt: skip
