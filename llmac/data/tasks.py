"""Named tasks: where a pipeline's SFT, RL and held-out questions come from.

Each task is a loader in :data:`TASKS` (add one with :func:`register_task`) giving the rows of a split:
``"train"`` (SFT data, with ``solution`` when the task has reference solutions), ``"rl"`` (RL prompts:
``question`` and ``answer`` only, never worked steps) and ``"eval"`` (held-out problems).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from datasets import Dataset

from llmac.config import option
from llmac.data.arithmetic import ArithmeticTaskConfig, arithmetic_dataset, mixed_supervision_dataset
from llmac.data.loading import RecordFields
from llmac.errors import ConfigError
from llmac.validation import require


@dataclass
class TaskConfig(ArithmeticTaskConfig, RecordFields):
    """Which task to train and evaluate on, and how many problems of each split (task=file: the fields
    of its records, :class:`~llmac.data.loading.RecordFields`)."""

    task: str = option(
        "arithmetic",
        "'arithmetic' (reasoning-gym chain_sum, built offline, worked solutions for every "
        "problem), 'arithmetic_mixed' (the same problems, only some SFT solutions worked, see "
        "answer_only_share; RL and held-out problems are fresh), 'gsm8k' (openai/gsm8k from the "
        "Hub, or local jsonl files: gsm8k_dir) or 'file' (train_path/eval_path, their fields named by "
        "question_field, answer_field, solution_field and answer_format).",
    )
    num_train: int = option(
        20000,
        "Training problems, SFT or RL (arithmetic: how many to generate; gsm8k/file: a cap, 0 = all).",
        range="[0, inf)",
    )
    num_eval: int = option(
        200, "Held-out problems (arithmetic: how many; gsm8k/file: a cap, 0 = all).", range="[0, inf)"
    )
    task_seed: int = option(0, "Seed of the generated task (eval draws from another seed).", range="[0, inf)")
    train_path: str | None = option(None, "task=file: training data (jsonl/parquet/dir).")
    eval_path: str | None = option(None, "task=file: held-out data.")
    dataset_name: str = option(
        "openai/gsm8k",
        "task=gsm8k: the dataset datasets.load_dataset reads (TRL's dataset_name), in GSM8K's layout: "
        "'question', and 'answer' ending in '#### N'.",
    )
    dataset_config: str | None = option("main", "task=gsm8k: its configuration (TRL's dataset_config).")
    dataset_train_split: str = option("train", "task=gsm8k: the split of SFT and RL problems.")
    dataset_test_split: str = option("test", "task=gsm8k: the split of held-out problems.")
    gsm8k_dir: str | None = option(
        None,
        "task=gsm8k: read <split>.jsonl from this folder instead (offline use; default $LLMAC_GSM8K_DIR, "
        "else the Hub).",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self, self.task in TASKS, f"task = {self.task!r}: must be one of {', '.join(map(repr, TASKS))}"
        )
        require(self, self.task != "file" or bool(self.train_path or self.eval_path),
                "task='file' needs --train_path and/or --eval_path")  # fmt: skip


SPLITS = ("train", "rl", "eval")
# (config, split) -> rows of that split; split is one of SPLITS
TaskLoader = Callable[["TaskConfig", str], Dataset]
TASKS: dict[str, TaskLoader] = {}


def register_task(name: str) -> Callable[[TaskLoader], TaskLoader]:
    """Register a task loader under ``name`` (the value of ``--task``)."""

    def register(loader: TaskLoader) -> TaskLoader:
        if name in TASKS:
            raise ValueError(f"task {name!r} is already registered")
        TASKS[name] = loader
        return loader

    return register


def _cap(dataset: Dataset, n: int) -> Dataset:
    return dataset.select(range(min(n, len(dataset)))) if n else dataset


@register_task("arithmetic")
def _arithmetic(config: TaskConfig, split: str) -> Dataset:
    train_rows = arithmetic_dataset(config.num_train, config.task_seed, config)
    if split != "eval":
        return train_rows
    # Small sums repeat across seeds: held-out problems are drawn elsewhere and never seen in training.
    seen = set(train_rows["question"])
    pool = arithmetic_dataset(4 * config.num_eval, config.task_seed + 1_000_003, config)
    held_out = [i for i, q in enumerate(pool["question"]) if q not in seen][: config.num_eval]
    if len(held_out) < config.num_eval:
        raise ValueError(
            f"only {len(held_out)} of {config.num_eval} held-out arithmetic problems are unseen in "
            "training: widen the task (more terms or digits) or train on fewer problems"
        )
    return pool.select(held_out)


@register_task("arithmetic_mixed")
def _arithmetic_mixed(config: TaskConfig, split: str) -> Dataset:
    size = config.num_eval if split == "eval" else config.num_train
    return mixed_supervision_dataset(split, size, config.task_seed, config)


@register_task("gsm8k")
def _gsm8k(config: TaskConfig, split: str) -> Dataset:
    from llmac.data.gsm8k import load_gsm8k

    train = split != "eval"
    data = load_gsm8k(
        config.dataset_train_split if train else config.dataset_test_split,
        data_dir=config.gsm8k_dir,
        dataset_name=config.dataset_name,
        dataset_config=config.dataset_config,
    )
    return _cap(data, config.num_train if train else config.num_eval)


@register_task("file")
def _file(config: TaskConfig, split: str) -> Dataset:
    from llmac.data.loading import PromptDataConfig, load_prompts

    train = split != "eval"
    path = config.train_path if train else config.eval_path
    if not path:
        raise ValueError(f"task=file needs --{'train' if train else 'eval'}_path")
    mapping = {f.name: getattr(config, f.name) for f in fields(RecordFields)}
    data_config = PromptDataConfig(path=path, **mapping)
    return _cap(load_prompts(data_config), config.num_train if train else config.num_eval)


def load_task(config: TaskConfig, split: str) -> Dataset:
    """Rows of ``split``: ``"train"`` (SFT: ``question``, ``answer``, ``solution`` when known), ``"rl"``
    (RL prompts: ``question`` and ``answer``) or ``"eval"`` (held-out problems).

    Tasks without problems of their own for RL give their training problems there, worked steps removed.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    if config.task not in TASKS:
        raise ConfigError(
            f"unknown task {config.task!r}: give --task one of {', '.join(map(repr, sorted(TASKS)))}"
        )
    rows = TASKS[config.task](config, split)
    if split == "rl" and "solution" in rows.column_names:
        rows = rows.remove_columns("solution")
    return rows
