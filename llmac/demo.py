"""``llmac demo``: the whole CPU spine, end to end, in minutes on 2 cores.

1. build the tiny actor (character-level tokenizer + 0.5M-parameter Qwen2) from the task's text;
2. SFT it on step-by-step arithmetic solutions (TRL SFTTrainer);
3. evaluate it on held-out problems with the vLLM engine (greedy accuracy, sampled pass@1 and maj@k);
4. sample solutions to training problems and label their steps by Monte-Carlo completion;
5. train a step critic (the SFT'd backbone with a value head) on those labels;
6. evaluate the critic on held-out solutions: step AUC against their MC labels, and best-of-n;
7. PPO from the SFT'd actor with the critic as its value model (step-level GAE), then held-out greedy
   accuracy before and after, and the training curves as PNG.

Every stage writes to ``run_dir`` and is skipped when its output there is complete and stamped with
the key of its inputs (content fingerprints of the models and datasets it reads, its settings, and
llmac's code version), so a rerun after an interruption resumes instead of starting over, while a
rerun with other inputs or other code redoes what they change. An output llmac wrote from other
inputs, or left half-written, is replaced; a folder llmac did not write is moved aside
(``<name>.stale-<n>``), never deleted.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig

from llmac.config import ModelConfig, option, parse_config
from llmac.critic.evaluation import evaluate_on_labels, evaluate_selection
from llmac.critic.labelling import MCLabelConfig, label_steps
from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
from llmac.critic.training import CriticConfig, CriticDataConfig, run_critic_training
from llmac.data.tasks import TaskConfig, load_task
from llmac.demo_pipelines import DEMO_PIPELINES, DemoRun, pipeline_recipes, run_demo_pipelines
from llmac.demo_stages import config_inputs, dataset_stage, model_stage, rows_key
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.errors import ConfigError
from llmac.evaluation import evaluate, metrics_from_rollouts
from llmac.files import write_text_atomically
from llmac.fingerprints import (
    inputs_key,
    model_fingerprint,
    reward_fingerprint,
)
from llmac.hub import export_model
from llmac.metrics_log import MetricsLog
from llmac.parity import critic_export_gap, greedy_parity
from llmac.plot import plot_run
from llmac.ppo.config import PPOConfig
from llmac.ppo.trainer import CONFIG_CLASSES as PPO_CONFIG_CLASSES
from llmac.ppo.trainer import run_ppo
from llmac.rewards import answer_keys, default_verifier, math_rewards
from llmac.rollouts import sample_rollouts
from llmac.sft import run_sft
from llmac.validation import check_fields

logger = logging.getLogger(__name__)


@dataclass
class DemoConfig:
    """Where the demo writes, how it evaluates, and how big the critic stages are."""

    run_dir: str = option("runs/demo", "Folder for every stage's output.")
    eval_samples: int = option(
        8, "Samples per held-out problem: pass@1, maj@k and best-of-k.", range="[1, inf)"
    )
    eval_temperature: float = option(1.0, "Temperature of the sampled evaluation.", range="[0, inf)")
    eval_max_new_tokens: int = option(96, "Tokens per completion at most.", range="[1, inf)")
    critic_questions: int = option(
        256, "Training problems whose sampled solutions the critic learns from.", range="[1, inf)"
    )
    critic_solutions: int = option(4, "Solutions sampled per such problem.", range="[1, inf)")
    mc_rollouts: int = option(8, "MC completions per step prefix (N of Math-Shepherd).", range="[1, inf)")
    held_out_labelled: int = option(
        400,
        "Held-out solutions MC-labelled for the critic's step AUC (the first ones sampled).",
        range="[1, inf)",
    )
    critic_max_steps: int = option(300, "Critic training steps.", range="[1, inf)")
    critic_batch_size: int = option(32, "Critic training batch (solutions).", range="[1, inf)")
    critic_learning_rate: float = option(1e-3, "Critic learning rate.", range="(0, inf)")
    ppo_recipe: str = option(
        "recipes/ppo/tiny_mixed.yaml",
        "PPO recipe (its PPOConfig fields are used with step-level GAE; actor, critic and task "
        "come from the demo).",
    )
    ppo_iterations: int | None = option(
        None, "PPO iterations; None keeps the recipe's num_iterations.", range="[1, inf)"
    )
    parity_prompts: int = option(
        16,
        "Held-out prompts greedy-decoded by HF and by the engine from the exported actor.",
        range="[1, inf)",
    )
    pipelines: list[str] = option(
        help="Pipeline stages run after PPO from the same SFT'd actor, each with its recipe below "
        f"({', '.join(DEMO_PIPELINES)}; 'none' for none).",
        factory=lambda: list(DEMO_PIPELINES),
    )
    dapo_recipe: str = option(
        "recipes/dapo/tiny_mixed_train.yaml",
        "DAPO (Direct Advantage Policy Optimization) recipe: build and training settings.",
    )
    critique_sft_recipe: str = option(
        "recipes/critique/tiny_sft.yaml", "Critique SFT recipe (oracle critiques of the actor's solutions)."
    )
    critique_rl_recipe: str = option("recipes/critique/tiny_stage1.yaml", "Critique-RL stage I recipe.")
    mcts_recipe: str = option(
        "recipes/mcts/tiny_expert_iteration.yaml", "MCTS expert-iteration recipe (search and SFT settings)."
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.pipelines == ["none"]:
            self.pipelines = []
        if unknown := sorted(set(self.pipelines) - set(DEMO_PIPELINES)):
            raise ConfigError(f"pipelines: unknown {unknown}; choose from {', '.join(DEMO_PIPELINES)}")


def _sample(engine, rows, sampling: SamplingConfig, path: Path, inputs: dict) -> Dataset:
    """Verified rollouts of ``rows``, saved at ``path``."""
    key = inputs_key(stage="rollouts", rows=rows_key(rows), sampling=asdict(sampling), **inputs)
    return dataset_stage(
        path, key, lambda shards: sample_rollouts(engine, rows, sampling, math_rewards, shard_dir=shards)
    )


def _label(engine, solutions: Dataset, mc: MCLabelConfig, path: Path, inputs: dict) -> Dataset:
    """MC step labels of ``solutions``, saved at ``path``."""
    key = inputs_key(stage="mc_labels", solutions=rows_key(solutions), mc=asdict(mc), **inputs)
    return dataset_stage(
        path, key, lambda shards: label_steps(engine, solutions, mc, math_rewards, shard_dir=shards)
    )


def _ppo_config(demo: DemoConfig, output_dir: Path, seed: int) -> PPOConfig:
    """The PPO recipe's settings, writing to ``output_dir`` (its estimator is replaced by step GAE)."""
    overrides = ["--config", demo.ppo_recipe, "--output_dir", str(output_dir), "--seed", str(seed)]
    if demo.ppo_iterations is not None:
        overrides += ["--num_iterations", str(demo.ppo_iterations)]
    *_, config = parse_config(PPO_CONFIG_CLASSES, overrides, prog="llmac demo")
    return config


class RewardNotices:
    """The verifier's notices about answers it could not read, one line per stage instead of per batch.

    While it lives, the ``llmac.rewards`` warnings are quieted (errors, such as unreadable gold
    answers, still show) unless ``LLMAC_VERBOSE`` is set (``llmac --verbose demo``).
    """

    _VERDICTS = ("scored", "correct", "wrong", "restarts")  # not problems (restarts are not items)

    def __init__(self) -> None:
        self._log = logging.getLogger("llmac.rewards")
        self._level = self._log.level
        if not os.environ.get("LLMAC_VERBOSE"):
            self._log.setLevel(logging.ERROR)
        self._last = default_verifier().stats.as_dict()

    def report(self, stage: str) -> None:
        """Log what the verifier could not read since the last report, if anything."""
        now = default_verifier().stats.as_dict()
        delta = {name: now[name] - self._last.get(name, 0) for name in now}
        self._last = now
        problems = {name: n for name, n in delta.items() if n and name not in self._VERDICTS}
        if problems:
            logger.info(
                "rewards, %s stage: %d of %d answers scored 0.0 unread (%s)", stage, sum(problems.values()),
                delta["scored"], ", ".join(f"{n} {name}" for name, n in problems.items()),
            )  # fmt: skip

    def close(self) -> None:
        self._log.setLevel(self._level)


def _lora_key(model_config: ModelConfig) -> dict | None:
    settings = model_config.lora_settings()
    return asdict(settings) if settings is not None else None


def _export_and_check(ppo_dir: Path, export_dir: Path, demo: DemoConfig, rollouts: Dataset,
                      engine_config: EngineConfig) -> dict:  # fmt: skip
    """``llmac export`` of PPO's actor and critic; HF-vs-engine greedy parity and the critic's score gap."""
    actor = export_model(ppo_dir / "actor", export_dir / "actor", overwrite=True)
    critic = export_model(ppo_dir / "critic", export_dir / "critic", overwrite=True)
    firsts = rollouts.filter(lambda row: row["sample_index"] == 0)  # one solution per held-out problem
    sample = firsts.select(range(min(demo.parity_prompts, len(firsts))))
    parity = greedy_parity(actor, sample["prompt"], demo.eval_max_new_tokens, engine_config)
    texts = [p + c for p, c in zip(sample["prompt"], sample["completion"], strict=True)]
    return {
        "actor": str(actor),
        "critic": str(critic),
        "greedy_parity": parity.summary(),
        "greedy_identical": parity.identical,
        "greedy_prompts": parity.num_prompts,
        "critic_max_abs_gap": critic_export_gap(ppo_dir / "critic", critic, texts),
    }


# What `recipes/demo.yaml` fills, in order.
CONFIG_CLASSES = (DemoConfig, ModelConfig, TaskConfig, SFTConfig, EngineConfig)


def main(argv: Sequence[str] | None = None) -> dict:
    demo, model_config, task_config, sft_args, engine_config = parse_config(
        CONFIG_CLASSES, argv, prog="llmac demo"
    )
    run_dir = Path(demo.run_dir)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    rewards = RewardNotices()

    def lap(name: str) -> None:
        timings[f"{name}_s"] = time.perf_counter() - started - sum(timings.values())
        rewards.report(name)

    # 1-2. SFT
    sft_dir = run_dir / "sft"
    sft_args.output_dir = str(sft_dir)
    task_inputs = config_inputs(task_config)
    sft_key = inputs_key(stage="sft", model=config_inputs(model_config), task=task_inputs,
                         sft=config_inputs(sft_args))  # fmt: skip
    model_stage(sft_dir, sft_key, lambda: run_sft(model_config, task_config, sft_args))
    actor = model_fingerprint(sft_dir)
    lap("sft")

    # 3-4. Everything that samples from the SFT'd actor, with one engine.
    held_out = load_task(task_config, "eval")
    critic_rows = load_task(task_config, "train")
    critic_rows = critic_rows.select(range(min(demo.critic_questions, len(critic_rows))))
    tokens = demo.eval_max_new_tokens
    mc = MCLabelConfig(num_rollouts=demo.mc_rollouts, max_new_tokens=tokens, seed=sft_args.seed)
    engine = build_engine(str(sft_dir), engine_config)
    sampled_by = {
        "actor": actor,
        "engine": config_inputs(engine_config),
        "reward": reward_fingerprint(math_rewards),
    }
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
        held_out_rollouts = _sample(engine, held_out, sampling, run_dir / "held_out_rollouts", sampled_by)
        lap("actor_eval")
        train_sampling = SamplingConfig(
            n=demo.critic_solutions, temperature=1.0, max_new_tokens=tokens, seed=sft_args.seed + 1
        )
        critic_solutions = _sample(
            engine, critic_rows, train_sampling, run_dir / "critic_solutions", sampled_by
        )
        _label(engine, critic_solutions, mc, run_dir / "critic_labels", sampled_by)
        to_label = held_out_rollouts.filter(
            lambda row: row["sample_index"] < max(1, demo.held_out_labelled // len(held_out))
        )
        held_out_labels = _label(engine, to_label, mc, run_dir / "held_out_labels", sampled_by)
        lap("mc_labels")
    finally:
        engine.close()

    # 5. The critic.
    critic_dir = run_dir / "critic"
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
    # The critic and PPO's actor train the SFT'd model with the demo's LoRA settings (if any).
    trained_model = replace(model_config, model_name_or_path=str(sft_dir))
    critic_key = inputs_key(stage="critic", actor=actor, data=config_inputs(data), lora=_lora_key(model_config),
                            critic=config_inputs(critic_args))  # fmt: skip
    model_stage(critic_dir, critic_key, lambda: run_critic_training(trained_model, data, critic_args))
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
    ppo_key = inputs_key(stage="ppo", actor=actor, critic=model_fingerprint(critic_dir), task=task_inputs,
                         engine=config_inputs(engine_config), ppo=config_inputs(ppo_config),
                         lora=_lora_key(model_config))  # fmt: skip
    model_stage(
        ppo_dir,
        ppo_key,
        lambda: run_ppo(
            trained_model,
            task_config,
            engine_config,
            replace(ppo_config, value_model=str(critic_dir), advantage_estimator="step_gae"),
        ),
        parts=("actor", "critic"),
    )
    evals = [(r["iteration"], r["eval_accuracy"]) for r in MetricsLog(ppo_dir).read() if "eval_accuracy" in r]
    curves = plot_run(ppo_dir)
    lap("ppo")

    # 8. Export the trained actor and critic, and reload them the way users will.
    exported = _export_and_check(ppo_dir, run_dir / "export", demo, held_out_rollouts, engine_config)
    lap("export")

    # 9. The other pipelines from the same SFT'd actor: DAPO, Critique-RL, MCTS expert iteration.
    run = DemoRun(run_dir, trained_model, task_config, engine_config, sft_args.seed, greedy.pass_at_1,
                  pipeline_recipes(demo))  # fmt: skip
    pipelines = {}
    for name in demo.pipelines:
        pipelines[name] = run_demo_pipelines(run, [name])[name]
        lap(name)
    rewards.close()
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
        "export": exported,
        "pipelines": {name: report.results for name, report in pipelines.items()},
        **timings,
    }
    write_text_atomically(run_dir / "demo_results.json", json.dumps(results, indent=2))
    n = selection.n
    print("\n== llmac demo ==")
    print(
        f"SFT'd actor ({model_config.model_name_or_path}) on {len(held_out)} held-out problems ({results['engine']}):"
    )
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
    print(f"Export to {run_dir / 'export'}: {exported['greedy_parity']}; critic scores after a plain "
          f"from_pretrained reload differ by {exported['critic_max_abs_gap']:.1e} at most")  # fmt: skip
    for report in pipelines.values():
        print("\n".join(report.lines))
    minutes = {k: v / 60 for k, v in timings.items()}
    print(
        f"  wall time: {minutes['total_s']:.1f} min (SFT {minutes['sft_s']:.1f}, eval {minutes['actor_eval_s']:.1f}, "
        f"MC labels {minutes['mc_labels_s']:.1f}, critic training {minutes['critic_train_s']:.1f}, "
        f"PPO {minutes['ppo_s']:.1f}, export {minutes['export_s']:.1f}"
        + "".join(f", {name} {minutes[f'{name}_s']:.1f}" for name in pipelines)
        + ")"
    )
    return results
