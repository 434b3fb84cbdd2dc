"""``llmac generate`` (rollouts to a dataset on disk) and ``llmac eval`` (accuracy of an actor)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llmac.config import option, parse_config
from llmac.data.tasks import SPLITS, TaskConfig, load_task
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.errors import ConfigError
from llmac.evaluation import EvalResult, evaluate
from llmac.field_groups import SamplingFields
from llmac.files import write_text_atomically
from llmac.outputs import (
    check_output,
    check_work_folder,
    claim_output,
    overwrite_field,
    remove_own_folder,
    write_marker,
)
from llmac.rewards import answer_keys, get_reward_fn
from llmac.rollouts import sample_rollouts, save_dataset_atomically
from llmac.validation import check_fields

logger = logging.getLogger(__name__)
SHARD_STAMP = "inputs.json"  # what rollouts.ShardStore writes into a shard folder it created


@dataclass
class RolloutRunConfig(SamplingFields):
    """What to sample from which actor (temperature, top_p, max_new_tokens: :class:`SamplingFields`), and
    where the results go."""

    model_name_or_path: str = option("", "The actor: a local folder or Hub id.")
    split: str = option("eval", "Task split to sample: 'train', 'rl' or 'eval'.", choices=SPLITS)
    num_samples: int = option(4, "Completions per prompt (k of pass@k and maj@k).", range="[1, inf)")
    seed: int = option(0, "Sampling seed.", range="[0, inf)")
    reward: str = option("math", "Reward function: a registered name or 'module:function'.")
    output_dir: str | None = option(None, "Where to write rollouts (and eval metrics).")
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)

    def sampling(self) -> SamplingConfig:
        return self.sampling_config(self.num_samples, self.seed)

    def check(self) -> None:
        if not self.model_name_or_path:
            raise ConfigError("llmac: --model_name_or_path is required (an actor folder or Hub id)")


def generate_main(argv: Sequence[str] | None = None) -> Path:
    run, task, engine_config = parse_config(
        [RolloutRunConfig, TaskConfig, EngineConfig], argv, prog="llmac generate"
    )
    run.check()
    if not run.output_dir:
        raise ConfigError("llmac generate: --output_dir is required")
    output = Path(run.output_dir)
    shards = output.with_name(output.name + ".shards")  # finished batches, kept until the dataset is saved
    inputs = [run.model_name_or_path, task.train_path, task.eval_path]
    check_output(output, "generate", overwrite=run.overwrite, sources=inputs)
    check_work_folder(shards, SHARD_STAMP, sources=inputs)
    engine = build_engine(run.model_name_or_path, engine_config)
    try:
        rollouts = sample_rollouts(
            engine,
            load_task(task, run.split),
            run.sampling(),
            get_reward_fn(run.reward),
            shard_dir=shards,
        )
    finally:
        engine.close()
    path = save_dataset_atomically(rollouts, output, "generate", overwrite=run.overwrite)
    remove_own_folder(shards, "generate", stamp=SHARD_STAMP)
    logger.info(
        "wrote %d rollouts to %s (mean reward %.4f)",
        len(rollouts),
        path,
        sum(rollouts["reward"]) / len(rollouts),
    )
    return path


def eval_main(argv: Sequence[str] | None = None) -> EvalResult:
    run, task, engine_config = parse_config(
        [RolloutRunConfig, TaskConfig, EngineConfig], argv, prog="llmac eval"
    )
    run.check()
    output = Path(run.output_dir) if run.output_dir else None
    if output is not None:
        inputs = [run.model_name_or_path, task.train_path, task.eval_path]
        check_output(output, "eval", run.overwrite, inputs, resumable=lambda p: (p / "shards").is_dir())
        claim_output(output, "eval")
    engine = build_engine(run.model_name_or_path, engine_config)
    try:
        shards = output / "shards" if output is not None else None
        result, rollouts = evaluate(
            engine, load_task(task, run.split), run.sampling(), get_reward_fn(run.reward), answer_keys, shards
        )
    finally:
        engine.close()
    print(result.summary())
    if output is not None:
        save_dataset_atomically(rollouts, output / "rollouts", "eval", overwrite=True)  # in our own folder
        write_text_atomically(output / "metrics.json", json.dumps(asdict(result), indent=2))
        remove_own_folder(shards, "eval", stamp=SHARD_STAMP)
        write_marker(output, "eval", complete=True)
        print(f"llmac eval: wrote rollouts and metrics.json to {output.resolve()}")
    return result
