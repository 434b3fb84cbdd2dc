"""``llmac demo``: the whole CPU spine, end to end, in minutes on 2 cores.

1. build the tiny actor (character-level tokenizer + 0.5M-parameter Qwen2) from the task's text;
2. SFT it on step-by-step arithmetic solutions (TRL SFTTrainer);
3. evaluate it on held-out problems with the vLLM engine (greedy accuracy, sampled pass@1 and maj@k);
4. sample solutions to training problems and label their steps by Monte-Carlo completion;
5. train a step critic (the SFT'd backbone with a value head) on those labels;
6. evaluate the critic on held-out solutions: step AUC against their MC labels, and best-of-n;
7. PPO from the SFT'd actor with the critic as its value model (step-level GAE), then held-out greedy
   accuracy before and after, and the training curves as PNG.

Every stage writes to ``run_dir`` and is skipped when its output is already there, so a rerun after
an interruption resumes instead of starting over.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from datasets import Dataset, load_from_disk
from trl import SFTConfig

from llmac.config import ModelConfig, parse_config
from llmac.critic.evaluation import evaluate_on_labels, evaluate_selection
from llmac.critic.labelling import MCLabelConfig, label_steps
from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
from llmac.critic.training import CriticConfig, CriticDataConfig, run_critic_training
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.evaluation import evaluate, metrics_from_rollouts
from llmac.files import write_text_atomically
from llmac.metrics_log import MetricsLog
from llmac.plot import plot_run
from llmac.ppo.config import PPOConfig
from llmac.ppo.trainer import CONFIG_CLASSES as PPO_CONFIG_CLASSES
from llmac.ppo.trainer import run_ppo
from llmac.rewards import answer_keys, math_rewards
from llmac.rollouts import sample_rollouts, save_dataset_atomically
from llmac.sft import run_sft

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Where the demo writes, how it evaluates, and how big the critic stages are."""

    run_dir: str = field(default="runs/demo", metadata={"help": "Folder for every stage's output."})
    eval_samples: int = field(
        default=8, metadata={"help": "Samples per held-out problem: pass@1, maj@k and best-of-k."}
    )
    eval_temperature: float = field(default=1.0, metadata={"help": "Temperature of the sampled evaluation."})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "Tokens per completion at most."})
    critic_questions: int = field(
        default=256, metadata={"help": "Training problems whose sampled solutions the critic learns from."}
    )
    critic_solutions: int = field(default=4, metadata={"help": "Solutions sampled per such problem."})
    mc_rollouts: int = field(
        default=8, metadata={"help": "MC completions per step prefix (N of Math-Shepherd)."}
    )
    held_out_labelled: int = field(
        default=400,
        metadata={
            "help": "Held-out solutions MC-labelled for the critic's step AUC (the first ones sampled)."
        },
    )
    critic_max_steps: int = field(default=300, metadata={"help": "Critic training steps."})
    critic_batch_size: int = field(default=32, metadata={"help": "Critic training batch (solutions)."})
    critic_learning_rate: float = field(default=1e-3, metadata={"help": "Critic learning rate."})
    ppo_recipe: str = field(
        default="recipes/ppo/tiny_arithmetic.yaml",
        metadata={
            "help": "PPO recipe (its PPOConfig fields are used; actor, critic and task come from the demo)."
        },
    )
    ppo_iterations: int | None = field(
        default=None, metadata={"help": "PPO iterations; None keeps the recipe's num_iterations."}
    )


def _is_saved_model(path: Path) -> bool:
    """A finished ``save_pretrained`` (single or sharded safetensors), not a half-written folder."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file()


def _stage_dataset(path: Path, build: Callable[[Path], Dataset]) -> Dataset:
    """The dataset a stage saved at ``path``, or ``build(shard_dir)``'s result saved there now.

    ``build`` keeps finished batches in ``shard_dir``, so a killed stage resumes where it stopped.
    """
    if _is_saved_dataset(path):
        return load_from_disk(str(path))
    shards = path.with_name(path.name + ".shards")
    dataset = build(shards)
    save_dataset_atomically(dataset, path)
    shutil.rmtree(shards, ignore_errors=True)
    return dataset


def _sample(engine, rows, sampling: SamplingConfig, path: Path) -> Dataset:
    """Verified rollouts of ``rows``, saved at ``path``."""
    return _stage_dataset(
        path, lambda shards: sample_rollouts(engine, rows, sampling, math_rewards, shard_dir=shards)
    )


def _label(engine, solutions: Dataset, mc: MCLabelConfig, path: Path) -> Dataset:
    """MC step labels of ``solutions``, saved at ``path``."""
    return _stage_dataset(
        path, lambda shards: label_steps(engine, solutions, mc, math_rewards, shard_dir=shards)
    )


def _ppo_config(demo: DemoConfig, output_dir: Path, seed: int) -> PPOConfig:
    """The PPO recipe's settings, writing to ``output_dir``."""
    overrides = ["--config", demo.ppo_recipe, "--output_dir", str(output_dir), "--seed", str(seed)]
    if demo.ppo_iterations is not None:
        overrides += ["--num_iterations", str(demo.ppo_iterations)]
    *_, config = parse_config(PPO_CONFIG_CLASSES, overrides, prog="llmac demo")
    return config


# What `recipes/demo.yaml` fills, in order.
CONFIG_CLASSES = (DemoConfig, ModelConfig, TaskConfig, SFTConfig, EngineConfig)


def main(argv: Sequence[str] | None = None) -> dict:
    demo, model_config, task_config, sft_args, engine_config = parse_config(
        CONFIG_CLASSES, argv, prog="llmac demo"
    )
    run_dir = Path(demo.run_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[f"{name}_s"] = time.perf_counter() - started - sum(timings.values())

    # 1-2. SFT
    sft_dir = run_dir / "sft"
    if _is_saved_model(sft_dir):
        logger.info("SFT output found in %s: skipping SFT", sft_dir)
    else:
        sft_args.output_dir = str(sft_dir)
        run_sft(model_config, task_config, sft_args)
    lap("sft")

    # 3-4. Everything that samples from the SFT'd actor, with one engine.
    held_out = load_task(task_config, "eval")
    critic_rows = load_task(task_config, "train")
    critic_rows = critic_rows.select(range(min(demo.critic_questions, len(critic_rows))))
    tokens = demo.eval_max_new_tokens
    mc = MCLabelConfig(num_rollouts=demo.mc_rollouts, max_new_tokens=tokens, seed=sft_args.seed)
    engine = build_engine(str(sft_dir), engine_config)
    try:
        greedy, _ = evaluate(
            engine,
            held_out,
            SamplingConfig(n=1, temperature=0.0, max_new_tokens=tokens),
            math_rewards,
            answer_keys,
        )
        sampling = SamplingConfig(
            n=demo.eval_samples, temperature=demo.eval_temperature, max_new_tokens=tokens, seed=sft_args.seed
        )
        held_out_rollouts = _sample(engine, held_out, sampling, run_dir / "held_out_rollouts")
        lap("actor_eval")
        train_sampling = SamplingConfig(
            n=demo.critic_solutions, temperature=1.0, max_new_tokens=tokens, seed=sft_args.seed + 1
        )
        critic_solutions = _sample(engine, critic_rows, train_sampling, run_dir / "critic_solutions")
        _label(engine, critic_solutions, mc, run_dir / "critic_labels")
        to_label = held_out_rollouts.filter(
            lambda row: row["sample_index"] < max(1, demo.held_out_labelled // len(held_out))
        )
        held_out_labels = _label(engine, to_label, mc, run_dir / "held_out_labels")
        lap("mc_labels")
    finally:
        engine.close()

    # 5. The critic.
    critic_dir = run_dir / "critic"
    if not _is_saved_model(critic_dir):
        critic_args = CriticConfig(
            output_dir=str(critic_dir),
            max_steps=demo.critic_max_steps,
            per_device_train_batch_size=demo.critic_batch_size,
            learning_rate=demo.critic_learning_rate,
            warmup_steps=demo.critic_max_steps // 10,
            lr_scheduler_type="cosine",
            weight_decay=0.0,
            eval_fraction=0.0,
            logging_steps=50,
            save_steps=demo.critic_max_steps,
            save_total_limit=1,
            report_to="none",
            seed=sft_args.seed,
            use_cpu=sft_args.use_cpu,
        )
        data = CriticDataConfig(init_from=str(sft_dir), train_data=str(run_dir / "critic_labels"))
        run_critic_training(ModelConfig(), data, critic_args)
    lap("critic_train")

    # 6. How good is it?
    critic = load_critic(critic_dir)
    critic_tokenizer = load_critic_tokenizer(critic_dir)
    delimiter = critic_delimiter(critic)
    on_labels = evaluate_on_labels(critic, critic_tokenizer, held_out_labels, delimiter)
    selection = evaluate_selection(critic, critic_tokenizer, held_out_rollouts, delimiter, answer_keys)
    lap("critic_eval")

    # 7. PPO with the critic as the value model.
    ppo_dir = run_dir / "ppo"
    ppo_config = _ppo_config(demo, ppo_dir, sft_args.seed)
    if not _is_saved_model(ppo_dir / "actor"):
        run_ppo(ModelConfig(model_name_or_path=str(sft_dir)), task_config, engine_config,
                replace(ppo_config, value_model=str(critic_dir)))  # fmt: skip
    evals = [(r["iteration"], r["eval_accuracy"]) for r in MetricsLog(ppo_dir).read() if "eval_accuracy" in r]
    curves = plot_run(ppo_dir)
    lap("ppo")
    timings["total_s"] = time.perf_counter() - started

    sampled = metrics_from_rollouts(held_out_rollouts, answer_keys)
    results = {
        "held_out_problems": len(held_out),
        "sft_greedy_accuracy": greedy.pass_at_1,
        "sft_sampled": asdict(sampled),
        "critic_on_held_out_labels": asdict(on_labels),
        "best_of_n": {**asdict(selection), "gain_over_random": selection.gain_over_random},
        "engine": type(engine).__name__,
        "ppo_iterations": ppo_config.num_iterations,
        "ppo_held_out_accuracy": evals,
        "ppo_gain": evals[-1][1] - evals[0][1],
        **timings,
    }
    write_text_atomically(run_dir / "demo_results.json", json.dumps(results, indent=2))
    n = selection.n
    print("\n== llmac demo ==")
    print(f"SFT'd tiny actor on {len(held_out)} held-out arithmetic problems ({results['engine']}):")
    print(f"  greedy accuracy: {greedy.pass_at_1:.1%}")
    print(f"  sampled (T={demo.eval_temperature}): {sampled.summary()}")
    print(f"Step critic on {on_labels.num_solutions} held-out solutions ({on_labels.num_steps} steps):")
    print(
        f"  step AUC vs MC labels: {on_labels.step_auc:.3f}   first-error F1: {on_labels.first_error_f1:.3f}"
    )
    print(
        f"  best-of-{n}: critic (min step) {selection.critic_min:.1%}, critic (last step) "
        f"{selection.critic_last:.1%}, majority {selection.majority:.1%}, random {selection.random:.1%} "
        f"-> gain over random {100 * selection.gain_over_random:+.1f} points"
    )
    if selection.sampler_confidence is not None:
        print(
            f"  (the actor's own confidence, its least likely token, picks {selection.sampler_confidence:.1%})"
        )
    print(f"PPO ({ppo_config.num_iterations} iterations, step-level GAE over the critic's step values):")
    print(
        f"  held-out greedy accuracy: {evals[0][1]:.1%} before -> {evals[-1][1]:.1%} after "
        f"({100 * results['ppo_gain']:+.1f} points); curves: {curves[0].parent}"
    )
    minutes = {k: v / 60 for k, v in timings.items()}
    print(
        f"  wall time: {minutes['total_s']:.1f} min (SFT {minutes['sft_s']:.1f}, MC labels "
        f"{minutes['mc_labels_s']:.1f}, critic training {minutes['critic_train_s']:.1f}, PPO {minutes['ppo_s']:.1f})"
    )
    return results
