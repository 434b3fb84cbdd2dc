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

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from datasets import Dataset, load_from_disk
from trl import SFTConfig

from llmac.config import ModelConfig, option, parse_config
from llmac.critic.evaluation import evaluate_on_labels, evaluate_selection
from llmac.critic.labelling import MCLabelConfig, label_steps
from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
from llmac.critic.training import CriticConfig, CriticDataConfig, run_critic_training
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.evaluation import evaluate, metrics_from_rollouts
from llmac.files import write_text_atomically
from llmac.fingerprints import (
    STAGE_STAMP,
    inputs_key,
    model_fingerprint,
    path_fingerprint,
    read_stage_stamp,
    reward_fingerprint,
    stage_done,
    write_stage_stamp,
)
from llmac.hub import export_model
from llmac.metrics_log import MetricsLog
from llmac.outputs import read_marker
from llmac.parity import critic_export_gap, greedy_parity
from llmac.plot import plot_run
from llmac.ppo.config import PPOConfig
from llmac.ppo.trainer import CONFIG_CLASSES as PPO_CONFIG_CLASSES
from llmac.ppo.trainer import run_ppo
from llmac.rewards import answer_keys, default_verifier, math_rewards
from llmac.rollouts import sample_rollouts, save_dataset_atomically
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

    def __post_init__(self) -> None:
        check_fields(self)


# -- stages: run once per key, skipped when done -------------------------------------------------
_OUTPUT_FIELDS = ("output_dir", "logging_dir", "run_name")  # where a stage writes, not what it computes
_INPUT_FIELDS = (  # fields naming a model, dataset or file a stage reads
    "model_name_or_path", "train_path", "eval_path", "gsm8k_dir", "init_from", "train_data", "eval_data",
    "value_model", "process_reward_model", "chat_template_path", "deepspeed",
)  # fmt: skip


def _config_inputs(config) -> dict:
    """A config's fields for a stage key: output paths dropped, local inputs keyed by their content."""
    values = config.to_dict() if hasattr(config, "to_dict") else asdict(config)
    return {
        name: {"content": path_fingerprint(value)} if _is_local_input(name, value) else value
        for name, value in values.items()
        if name not in _OUTPUT_FIELDS
    }


def _is_local_input(name: str, value) -> bool:
    return name in _INPUT_FIELDS and isinstance(value, str) and bool(value) and Path(value).exists()


def _rows_key(rows: Dataset) -> str:
    """The content of in-memory rows, for a key (the demo's task splits are small)."""
    return hashlib.sha256(json.dumps(rows.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def _open_stage(path: Path, key: str, parts: Sequence[str] = (".",)) -> bool:
    """True if ``path`` holds this stage's finished output; otherwise clears the way to make it.

    Only an unfinished output of a run with this very key (its key in the ``running`` stamp beside
    it) is kept, for the stage's trainer to resume. Anything else at ``path`` goes: llmac's own
    output (its stage stamp or output marker: made from other inputs or code, or damaged) is
    deleted; a folder llmac did not write is renamed aside, never deleted.
    """
    if stage_done(path, key, parts=parts):
        logger.info("%s is done (same inputs and code): skipping it", path)
        return True
    if not path.exists() or _running_key(path) == key or (path.is_dir() and not any(path.iterdir())):
        return False
    if read_stage_stamp(path) is not None or read_marker(path) is not None:
        # Renamed first, so a kill during the deletion leaves no half folder at ``path``.
        doomed = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:12]}")
        path.rename(doomed)
        shutil.rmtree(doomed)
        logger.warning("%s was made from other inputs or code, or is incomplete: redoing it", path)
    else:
        aside = _free_sibling(path, "stale")
        path.rename(aside)
        logger.warning("%s was not written by llmac: moved it to %s, and making it anew", path, aside)
    return False


def _running_stamp(path: Path) -> Path:
    # Beside the output, not in it: the trainer claims its output folder only if it is empty or its own.
    return path.with_name(f".{path.name}{STAGE_STAMP}")


def _running_key(path: Path) -> str | None:
    try:
        return json.loads(_running_stamp(path).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _free_sibling(path: Path, tag: str) -> Path:
    number = 1
    while (candidate := path.with_name(f"{path.name}.{tag}-{number}")).exists():
        number += 1
    return candidate


def _model_stage(path: Path, key: str, train: Callable[[], object], parts: Sequence[str] = (".",)) -> None:
    """Run ``train`` (which writes ``path``) unless ``path`` already holds its finished output."""
    if _open_stage(path, key, parts):
        return
    write_text_atomically(_running_stamp(path), json.dumps({"key": key, "state": "running"}))
    train()
    write_stage_stamp(path, key)
    _running_stamp(path).unlink()
    if not stage_done(path, key, parts=parts):
        raise RuntimeError(f"{path}: the stage finished without a complete model in {list(parts)}")


def _stage_dataset(path: Path, key: str, build: Callable[[Path], Dataset]) -> Dataset:
    """The dataset a stage saved at ``path`` with this ``key``, or ``build(shard_dir)``'s result saved there now.

    ``build`` keeps finished batches in a shard folder named after the key, so a killed stage
    resumes where it stopped and a stage with other inputs never meets its shards.
    """
    if _open_stage(path, key):
        return load_from_disk(str(path))
    shards = path.with_name(f"{path.name}.shards-{key[:12]}")
    dataset = build(shards)
    save_dataset_atomically(dataset, path)
    write_stage_stamp(path, key)
    shutil.rmtree(shards, ignore_errors=True)  # llmac's own shards of this very key
    return dataset


def _sample(engine, rows, sampling: SamplingConfig, path: Path, inputs: dict) -> Dataset:
    """Verified rollouts of ``rows``, saved at ``path``."""
    key = inputs_key(stage="rollouts", rows=_rows_key(rows), sampling=asdict(sampling), **inputs)
    return _stage_dataset(
        path, key, lambda shards: sample_rollouts(engine, rows, sampling, math_rewards, shard_dir=shards)
    )


def _label(engine, solutions: Dataset, mc: MCLabelConfig, path: Path, inputs: dict) -> Dataset:
    """MC step labels of ``solutions``, saved at ``path``."""
    key = inputs_key(stage="mc_labels", solutions=_rows_key(solutions), mc=asdict(mc), **inputs)
    return _stage_dataset(
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
    task_inputs = _config_inputs(task_config)
    sft_key = inputs_key(stage="sft", model=_config_inputs(model_config), task=task_inputs,
                         sft=_config_inputs(sft_args))  # fmt: skip
    _model_stage(sft_dir, sft_key, lambda: run_sft(model_config, task_config, sft_args))
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
        "engine": _config_inputs(engine_config),
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
    critic_key = inputs_key(stage="critic", actor=actor, data=_config_inputs(data), lora=_lora_key(model_config),
                            critic=_config_inputs(critic_args))  # fmt: skip
    _model_stage(critic_dir, critic_key, lambda: run_critic_training(trained_model, data, critic_args))
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
                         engine=_config_inputs(engine_config), ppo=_config_inputs(ppo_config),
                         lora=_lora_key(model_config))  # fmt: skip
    _model_stage(
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
    minutes = {k: v / 60 for k, v in timings.items()}
    print(
        f"  wall time: {minutes['total_s']:.1f} min (SFT {minutes['sft_s']:.1f}, eval {minutes['actor_eval_s']:.1f}, "
        f"MC labels {minutes['mc_labels_s']:.1f}, critic training {minutes['critic_train_s']:.1f}, "
        f"PPO {minutes['ppo_s']:.1f}, export {minutes['export_s']:.1f})"
    )
    return results
