"""``llmac generate`` (rollouts to a dataset on disk) and ``llmac eval`` (accuracy of an actor)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmac.config import parse_config
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.evaluation import EvalResult, evaluate
from llmac.files import write_text_atomically
from llmac.rewards import answer_keys, get_reward_fn
from llmac.rollouts import sample_rollouts, save_dataset_atomically

logger = logging.getLogger(__name__)


@dataclass
class RolloutRunConfig:
    """What to sample from which actor, and where the results go."""

    model_name_or_path: str = field(default="", metadata={"help": "The actor: a local folder or Hub id."})
    split: str = field(default="eval", metadata={"help": "Task split to sample: 'train' or 'eval'."})
    num_samples: int = field(default=4, metadata={"help": "Completions per prompt (k of pass@k and maj@k)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 is greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=256, metadata={"help": "Tokens per completion at most."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    reward: str = field(
        default="math", metadata={"help": "Reward function: a registered name or 'module:function'."}
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where to write rollouts (and eval metrics)."}
    )

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            n=self.num_samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    def check(self) -> None:
        if not self.model_name_or_path:
            raise SystemExit("llmac: --model_name_or_path is required")


def generate_main(argv: Sequence[str] | None = None) -> Path:
    run, task, engine_config = parse_config(
        [RolloutRunConfig, TaskConfig, EngineConfig], argv, prog="llmac generate"
    )
    run.check()
    if not run.output_dir:
        raise SystemExit("llmac generate: --output_dir is required")
    shards = Path(run.output_dir + ".shards")  # finished batches, kept until the dataset is saved
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
    path = save_dataset_atomically(rollouts, run.output_dir)
    shutil.rmtree(shards)
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
    engine = build_engine(run.model_name_or_path, engine_config)
    try:
        shards = Path(run.output_dir) / "shards" if run.output_dir else None
        result, rollouts = evaluate(
            engine, load_task(task, run.split), run.sampling(), get_reward_fn(run.reward), answer_keys, shards
        )
    finally:
        engine.close()
    print(result.summary())
    if run.output_dir:
        save_dataset_atomically(rollouts, Path(run.output_dir) / "rollouts")
        write_text_atomically(Path(run.output_dir) / "metrics.json", json.dumps(asdict(result), indent=2))
        shutil.rmtree(shards)
    return result
