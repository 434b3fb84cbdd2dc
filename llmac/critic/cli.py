"""``llmac critic label | train | eval | score | inspect``: the step critic's command line.

Each subcommand fills its config dataclasses from ``--config recipe.yaml`` and ``--field value`` flags
and runs one pipeline; every output is written atomically, and ``label`` resumes a killed run.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llmac.config import option, parse_config
from llmac.critic.evaluation import score_dataset, solutions_of
from llmac.critic.labelling import MCLabelConfig, label_steps
from llmac.data.loading import load_records
from llmac.data.tasks import SPLITS, TaskConfig, load_task
from llmac.engines import EngineConfig, build_engine
from llmac.errors import ConfigError, OutputError
from llmac.field_groups import SolutionFields
from llmac.files import write_text_atomically
from llmac.outputs import (
    check_file_output,
    check_output,
    claim_output,
    claim_work_folder,
    overwrite_field,
    remove_own_folder,
    write_marker,
)
from llmac.rewards import answer_keys, get_reward_fn
from llmac.rollouts import sample_rollouts, save_dataset_atomically
from llmac.validation import check_fields

logger = logging.getLogger(__name__)

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "label": ("llmac.critic.cli", "label_main", "Monte-Carlo step labels for sampled solutions"),
    "train": ("llmac.critic.training", "main", "train a step critic on labelled steps (BCE)"),
    "eval": ("llmac.critic.cli", "eval_main", "step AUC, first-error F1 and best-of-N of a critic"),
    "score": ("llmac.critic.cli", "score_main", "add a step_values column to a dataset of solutions"),
    "inspect": ("llmac.critic.cli", "inspect_main", "an HTML page of solutions coloured by step value"),
}


def main(argv: Sequence[str] | None = None) -> None:
    from llmac.cli import dispatch

    dispatch("llmac critic", SUBCOMMANDS, list(sys.argv[1:] if argv is None else argv))


# ------------------------------------------------------------------------------------------- label


@dataclass
class LabelRunConfig(SolutionFields):
    """Which solutions to label: sampled here from an actor (:class:`SolutionFields`), or read from a
    rollout dataset."""

    model_name_or_path: str = option("", "The actor that samples solutions and MC completions.")
    solutions: str | None = option(
        None, "A rollout dataset (`llmac generate`) to label; omit to sample from the task."
    )
    split: str = option("train", "Task split to sample solutions for.", choices=SPLITS)
    reward: str = option("math", "Reward function: registered name or 'module:fn'.")
    output_dir: str = option("", "Where the labelled dataset is written.")
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)


# What a `llmac critic label` recipe fills, in order.
LABEL_CONFIG_CLASSES = (LabelRunConfig, MCLabelConfig, TaskConfig, EngineConfig)


def label_main(argv: Sequence[str] | None = None) -> Path:
    run, mc, task, engine_config = parse_config(LABEL_CONFIG_CLASSES, argv, prog="llmac critic label")
    if not run.model_name_or_path or not run.output_dir:
        raise ConfigError("llmac critic label: --model_name_or_path and --output_dir are required")
    output = Path(run.output_dir)
    inputs = [run.model_name_or_path, run.solutions, task.train_path, task.eval_path]
    work = claim_work_folder(output, "critic label", run.overwrite, inputs)
    reward_fn = get_reward_fn(run.reward)
    engine = build_engine(run.model_name_or_path, engine_config)
    try:
        if run.solutions:
            solutions = load_records(run.solutions)
        else:
            rows = load_task(task, run.split)
            sampling = run.solution_sampling(mc.seed)
            solutions = sample_rollouts(engine, rows, sampling, reward_fn, shard_dir=work / "solutions")
        labelled = label_steps(engine, solutions, mc, reward_fn, shard_dir=work / "labels")
    finally:
        engine.close()
    save_dataset_atomically(labelled, output, "critic label", overwrite=run.overwrite)
    remove_own_folder(work, "critic label")
    logger.info(
        "wrote %d labelled solutions (%d steps) to %s",
        len(labelled),
        sum(map(len, labelled["labels"])),
        output,
    )
    return output


# ------------------------------------------------------------------------------------------- score


@dataclass
class CriticRunConfig:
    """A trained critic applied to a dataset."""

    critic: str = option("", "The critic folder (`llmac critic train` output).")
    data: str = option(
        "", "Solutions: a rollout dataset (question, completion) or a labelled one (prompt, completions)."
    )
    output: str = option("", "Where to write the result.")
    overwrite: bool = overwrite_field()
    batch_size: int = option(32, "Solutions per forward pass.", range="[1, inf)")
    threshold: float = option(0.5, "A step valued below this is flagged as wrong.", range="[0, 1]")

    def __post_init__(self) -> None:
        check_fields(self)

    def require(self, *names: str, prog: str) -> None:
        missing = [f"--{n}" for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError(f"{prog}: {' and '.join(missing)} required")


def _load_critic(path: str):
    from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
    from llmac.paths import check_model_path

    check_model_path(path, "critic folder", flag="critic")
    model = load_critic(path)
    return model, load_critic_tokenizer(path), critic_delimiter(model)


def score_main(argv: Sequence[str] | None = None) -> Path:
    (run,) = parse_config([CriticRunConfig], argv, prog="llmac critic score")
    run.require("critic", "data", "output", prog="llmac critic score")
    check_output(run.output, "critic score", overwrite=run.overwrite, sources=[run.critic, run.data])
    model, tokenizer, delimiter = _load_critic(run.critic)
    data = load_records(run.data)
    values = score_dataset(model, tokenizer, data, delimiter, run.batch_size)
    if "step_values" in data.column_names:
        data = data.remove_columns("step_values")
    path = save_dataset_atomically(
        data.add_column("step_values", values), run.output, "critic score", overwrite=run.overwrite
    )
    print(f"llmac critic score: wrote {len(values)} scored solutions to {path.resolve()}")
    return path


# -------------------------------------------------------------------------------------------- eval


@dataclass
class CriticEvalConfig:
    """What to evaluate a critic on; give either dataset or both."""

    critic: str = option("", "The critic folder.")
    labels: str | None = option(None, "Held-out MC-labelled solutions (`llmac critic label`): AUC, F1.")
    rollouts: str | None = option(None, "Rollouts with n samples per question (`llmac generate`): best-of-n.")
    threshold: float = option(0.5, "Label threshold for AUC; value threshold for F1.", range="[0, 1]")
    batch_size: int = option(32, "Solutions per forward pass.", range="[1, inf)")
    output_dir: str | None = option(None, "Where to write metrics.json.")
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)


def evaluate_critic(model, tokenizer, delimiter: str, config: CriticEvalConfig) -> dict:
    """The metrics ``config`` asks for, as a JSON-ready dict."""
    from llmac.critic.evaluation import evaluate_on_labels, evaluate_selection

    if not config.labels and not config.rollouts:
        raise ConfigError("llmac critic eval: give --labels, --rollouts or both")
    metrics: dict = {}
    if config.labels:
        labelled = load_records(config.labels)
        metrics["labels"] = asdict(
            evaluate_on_labels(model, tokenizer, labelled, delimiter, config.threshold, config.batch_size)
        )
    if config.rollouts:
        selection = evaluate_selection(
            model, tokenizer, load_records(config.rollouts), delimiter, answer_keys, config.batch_size
        )
        metrics["best_of_n"] = {**asdict(selection), "gain_over_random": selection.gain_over_random}
    return metrics


def eval_main(argv: Sequence[str] | None = None) -> dict:
    (config,) = parse_config([CriticEvalConfig], argv, prog="llmac critic eval")
    if not config.critic:
        raise ConfigError("llmac critic eval: --critic is required")
    if config.output_dir:
        inputs = [config.critic, config.labels, config.rollouts]
        check_output(config.output_dir, "critic eval", overwrite=config.overwrite, sources=inputs)
    model, tokenizer, delimiter = _load_critic(config.critic)
    metrics = evaluate_critic(model, tokenizer, delimiter, config)
    print(json.dumps(metrics, indent=2))
    if config.output_dir:
        output = claim_output(config.output_dir, "critic eval")
        write_text_atomically(output / "metrics.json", json.dumps(metrics, indent=2))
        write_marker(output, "critic eval", complete=True)
        print(f"llmac critic eval: wrote {(output / 'metrics.json').resolve()}")
    return metrics


# ----------------------------------------------------------------------------------------- inspect


@dataclass
class InspectConfig(CriticRunConfig):
    """Which solutions the HTML page shows."""

    max_solutions: int = option(200, "Show at most this many solutions.", range="[1, inf)")


def inspect_main(argv: Sequence[str] | None = None) -> Path:
    from llmac.critic.inspector import write_inspector

    (run,) = parse_config([InspectConfig], argv, prog="llmac critic inspect")
    run.require("critic", "data", "output", prog="llmac critic inspect")
    check_inspector_output(Path(run.output), run.overwrite, sources=[run.critic, run.data])
    model, tokenizer, delimiter = _load_critic(run.critic)
    data = load_records(run.data)
    data = data.select(range(min(run.max_solutions, len(data))))
    values = score_dataset(model, tokenizer, data, delimiter, run.batch_size)
    records = inspector_records(data, values, delimiter)
    path = write_inspector(run.output, records, threshold=run.threshold)
    print(f"llmac critic inspect: wrote {len(records)} solutions to {path.resolve()}")
    return path


def check_inspector_output(path: Path, overwrite: bool, sources) -> None:
    """An existing file at ``path`` is replaced only if it is an inspector page and ``overwrite`` is set."""
    check_file_output(path, "critic inspect", sources)
    if not path.exists():
        return
    page = path.read_bytes().decode("utf-8", "replace")
    if not (page.startswith("<!DOCTYPE html>") and 'id="only-flagged"' in page):
        raise OutputError(
            f"{path} exists and is not a page `llmac critic inspect` wrote: it will not replace it, even "
            "with --overwrite; choose another --output"
        )
    if not overwrite:
        raise OutputError(f"{path} holds an earlier inspector page: pass --overwrite to replace it")


def inspector_records(data, values: list[list[float]], delimiter: str) -> list[dict]:
    """One record per solution for the inspector: question, steps, their values, and what is known."""
    from llmac.steps import clean_steps

    questions, responses = solutions_of(data)
    records = []
    for i, (question, response) in enumerate(zip(questions, responses, strict=True)):
        steps = clean_steps(response, delimiter) if isinstance(response, str) else list(response)
        record = {"question": question, "steps": steps, "values": values[i]}
        # dataset column -> inspector field (rollouts have `reward`, labelled data `solution_reward`)
        for column, key in (
            ("reward", "reward"),
            ("solution_reward", "reward"),
            ("answer", "gold"),
            ("labels", "labels"),
        ):
            if column in data.column_names:
                record[key] = data[column][i]
        records.append(record)
    return records
