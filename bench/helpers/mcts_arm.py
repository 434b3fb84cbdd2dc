"""The bench's MCTS expert-iteration arm: ``ROUNDS`` rounds of search over fresh RL problems (verifier at
the leaves: terminals verified, new nodes valued by verified rollouts), then SFT of the actor on the
verified solutions (:mod:`llmac.mcts.expert_iteration`, ``llmac sft``'s trainer), within the budget of
generated completions every arm gets.

Charging: every sequence the engine generates is one completion, a sampled candidate step as much as
a rollout (see :mod:`llmac.mcts.expert_iteration`); each round may spend ``budget / ROUNDS`` and stops
before an iteration that could go past it. After each round the SFT'd actor is in the engine and is
evaluated like every arm (:func:`llmac.rl.sampler.held_out_accuracy`).
"""

from __future__ import annotations

import time
from dataclasses import asdict

from llmac.data.tasks import load_task
from llmac.mcts.expert_iteration import ExpertIterationConfig, RoundResult, run_expert_iteration
from llmac.mcts.search import SearchConfig
from llmac.models import load_tokenizer
from llmac.rewards.registry import get_reward_fn
from llmac.rl.sampler import Prompts, SamplerSettings, held_out_accuracy

# The arm's own settings on the testbed (the recipe's PPO fields give sampling, reward, seed and budget).
ROUNDS = 2
SEARCH = {"iterations": 8, "branching": 4, "max_children": 4, "max_depth": 8, "max_step_tokens": 32,
          "selection": "uct", "c": 2.0}  # fmt: skip
ITERATION = {"trees_per_batch": 64, "leaf": "rollouts", "num_rollouts": 1, "keep_rollout_solutions": True,
             "max_solutions_per_question": 4,
             "sft_learning_rate": 3e-4, "sft_epochs": 3.0, "sft_batch_size": 32,
             "sft_lr_scheduler_type": "cosine"}  # fmt: skip


def run_mcts_arm(configs: tuple, engine, critic: str | None, rounds: int = ROUNDS) -> dict:
    """Expert iteration from the engine's current weights (the SFT'd actor); the bench's result dict."""
    model_config, task_config, engine_config, ppo = configs
    budget = ppo.num_iterations * ppo.prompts_per_iteration * ppo.samples_per_prompt
    reward_fn = get_reward_fn(ppo.reward)
    settings = SamplerSettings.of(ppo)
    held_out = Prompts.tokenize(load_tokenizer(model_config.model_name_or_path), load_task(task_config, "eval"),
                                ppo.max_prompt_length)  # fmt: skip
    search = SearchConfig(**SEARCH, temperature=ppo.temperature, top_p=ppo.top_p, seed=ppo.seed)
    per_round = budget // rounds
    # A batch's first iteration must fit in a round's budget (a --quick budget is a few hundred).
    first_iteration = (
        search.branching + min(search.branching, search.max_children) * ITERATION["num_rollouts"]
    )
    trees = max(1, min(ITERATION["trees_per_batch"], per_round // first_iteration))
    config = ExpertIterationConfig(output_dir=ppo.output_dir, rounds=rounds, completion_budget=per_round,
                                   rollout_max_new_tokens=ppo.max_new_tokens, reward=ppo.reward,
                                   overwrite=True, **{**ITERATION, "trees_per_batch": trees})  # fmt: skip
    started = time.perf_counter()
    curve = [{"completions": 0, **held_out_accuracy(engine, held_out, settings, reward_fn)}]
    eval_seconds = time.perf_counter() - started
    spent = {"completions": 0, "tokens": 0}

    def evaluate(result: RoundResult) -> None:
        nonlocal eval_seconds
        spent["completions"] += result.completions
        spent["tokens"] += result.generated_tokens
        started = time.perf_counter()
        figures = held_out_accuracy(engine, held_out, settings, reward_fn)
        eval_seconds += time.perf_counter() - started
        curve.append({"completions": spent["completions"], "generated_tokens": spent["tokens"], **figures})

    results = run_expert_iteration(model_config, task_config, search, config, engine, after_round=evaluate)
    return {"curve": curve, "completions": spent["completions"], "generated_tokens": spent["tokens"],
            "learning_rates": [], "setup_seconds": 0.0, "train_seconds": sum(r.seconds for r in results),
            "eval_seconds": eval_seconds, "rounds": [asdict(r) for r in results]}  # fmt: skip
