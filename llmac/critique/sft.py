"""``llmac critique sft``: the critic's warm start, on critiques of the actor's own solutions.

Top to bottom (:func:`run_critique_sft`):

1. the frozen actor samples ``solutions_per_problem`` solutions of ``num_problems`` problems of the
   task's ``split`` (its own mistakes are what the critic must learn to spot);
2. the exact oracle writes each solution's critique (:mod:`llmac.critique.data`: the first wrong step
   marked), balanced between right and wrong final answers (SFTConfig's ``seed``); the dataset is saved to
   ``critique_data_dir`` (a rerun reuses it);
3. ``llmac sft`` (TRL's SFTTrainer, its ``SFTConfig`` fields) trains the critic on it, starting from
   ``critic_init`` (the actor itself by default: the compact format uses only the actor's characters),
   and saves it to ``output_dir``.

The oracle is the arithmetic task's, so this command needs an arithmetic task. It runs on one process
(the data is built before the SFT starts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trl import SFTConfig

from llmac.config import ModelConfig, option, parse_config
from llmac.critique.data import CritiqueDataConfig, critique_sft_dataset
from llmac.data.loading import DataError
from llmac.data.tasks import SPLITS, TaskConfig, load_task
from llmac.distributed import end_process_group, is_main_process
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.outputs import OutputConfig, overwrite_field
from llmac.rewards.registry import get_reward_fn
from llmac.rollouts import sample_rollouts, save_dataset_atomically
from llmac.sft import run_sft
from llmac.validation import check_fields, require

logger = logging.getLogger(__name__)


@dataclass
class CritiqueSFTRunConfig:
    """Which of the actor's solutions are critiqued, and where the critique data goes."""

    actor: str = option("", "The actor (a saved model folder) whose solutions are critiqued.")
    critic_init: str | None = option(
        None, "The model the critic starts from; None: the actor (its tokenizer must write critiques)."
    )
    critique_data_dir: str = option(
        "runs/critique/sft_data", "Where the critique dataset is written (reused by a rerun)."
    )
    split: str = option("train", "Task split whose problems the actor solves.", choices=SPLITS)
    num_problems: int = option(2000, "Problems solved (the split's first ones).", range="[1, inf)")
    solutions_per_problem: int = option(4, "Actor solutions per problem.", range="[1, inf)")
    solution_temperature: float = option(1.0, "Temperature of the actor's solutions.", range="[0, inf)")
    solution_max_new_tokens: int = option(96, "Tokens per solution at most.", range="[1, inf)")
    answer_reward: str = option(
        "math", "What judges the actor's answers: a reward name or 'module:function'."
    )
    critique_format: str = option("compact", "Critique layout: 'compact' (tiny CPU model) or 'verbose'.")
    deduplicate: bool = option(True, "Critique each distinct (problem, solution) pair once.")
    balance: bool = option(
        True,
        "As many critiques of right final answers as of wrong ones (the larger side subsampled with "
        "`seed`), so the critic does not learn to always give one verdict.",
    )
    overwrite_data: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.actor), "actor: give the actor's model folder (--actor PATH)")

    def data_config(self, seed: int) -> CritiqueDataConfig:
        return CritiqueDataConfig(self.critique_format, self.deduplicate, self.balance, seed)


def build_critique_data(
    run: CritiqueSFTRunConfig,
    task: TaskConfig,
    engine_config: EngineConfig,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Sample the actor's solutions, critique them with the oracle, save the dataset; its folder."""
    out = Path(run.critique_data_dir)
    if (out / "dataset_info.json").is_file() and not run.overwrite_data:
        logger.info("critique data found at %s: reused (--overwrite_data true rebuilds it)", out)
        return out
    rows = load_task(task, run.split)
    rows = rows.select(range(min(run.num_problems, len(rows))))
    sampling = SamplingConfig(
        n=run.solutions_per_problem,
        temperature=run.solution_temperature,
        max_new_tokens=run.solution_max_new_tokens,
        seed=seed,
    )
    with build_engine(run.actor, engine_config) as engine:
        rollouts = sample_rollouts(
            engine, rows, sampling, get_reward_fn(run.answer_reward), progress=progress
        )
    dataset = critique_sft_dataset(rollouts, run.data_config(seed))
    if len(dataset) == 0:
        raise DataError(
            f"critique sft: no critiques from {run.num_problems} problems x {run.solutions_per_problem} "
            f"solutions of {run.actor} (balance={run.balance} needs both right and wrong answers): "
            "sample more problems or solutions, or set --balance false"
        )
    right = sum(dataset["answer_correct"])
    logger.info(
        "critique data: %d critiques (%d of right answers, %d of wrong)",
        len(dataset),
        right,
        len(dataset) - right,
    )
    return save_dataset_atomically(dataset, out, "critique sft", overwrite=run.overwrite_data)


# What a `llmac critique sft` recipe fills, in order.
CONFIG_CLASSES = (CritiqueSFTRunConfig, TaskConfig, EngineConfig, SFTConfig, OutputConfig)


def run_critique_sft(
    run: CritiqueSFTRunConfig,
    task: TaskConfig,
    engine_config: EngineConfig,
    args: SFTConfig,
    overwrite: bool = False,
) -> Path:
    """Build the critique data (main process) and SFT the critic on it; returns the critic's folder."""
    data_dir = Path(run.critique_data_dir)
    if is_main_process():
        build_critique_data(run, task, engine_config, args.seed, progress=not args.disable_tqdm)
    sft_task = TaskConfig(
        task="file", train_path=str(data_dir), solution_field="solution", num_train=0, answer_format="plain"
    )
    critic = ModelConfig(model_name_or_path=run.critic_init or run.actor)
    return run_sft(critic, sft_task, args, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> Path:
    run, task, engine_config, args, output = parse_config(CONFIG_CLASSES, argv, prog="llmac critique sft")
    critic = run_critique_sft(run, task, engine_config, args, overwrite=output.overwrite)
    end_process_group()
    print(f"llmac critique sft: critic in {Path(critic).resolve()}; critique data in {run.critique_data_dir}")
    return critic
