"""Named tasks: where a pipeline's train and held-out questions come from."""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets import Dataset

from llmac.data.arithmetic import ArithmeticTaskConfig, arithmetic_dataset


@dataclass
class TaskConfig(ArithmeticTaskConfig):
    """Which task to train and evaluate on, and how many problems of each split."""

    task: str = field(
        default="arithmetic",
        metadata={
            "help": "'arithmetic' (reasoning-gym chain_sum, built offline), 'gsm8k' (the shared "
            "GSM8K jsonl files) or 'file' (train_path/eval_path with the field mapping below)."
        },
    )
    num_train: int = field(
        default=20000,
        metadata={
            "help": "Training problems (arithmetic: how many to generate; gsm8k/file: a cap, 0 = all)."
        },
    )
    num_eval: int = field(
        default=200,
        metadata={"help": "Held-out problems (arithmetic: how many; gsm8k/file: a cap, 0 = all)."},
    )
    task_seed: int = field(
        default=0, metadata={"help": "Seed of the generated task (eval draws from another seed)."}
    )
    train_path: str | None = field(
        default=None, metadata={"help": "task=file: training data (jsonl/parquet/dir)."}
    )
    eval_path: str | None = field(default=None, metadata={"help": "task=file: held-out data."})
    question_field: str = field(
        default="question", metadata={"help": "task=file: column holding the question."}
    )
    answer_field: str = field(
        default="answer", metadata={"help": "task=file: column holding the gold answer."}
    )
    solution_field: str | None = field(
        default=None, metadata={"help": "task=file: column holding a step-by-step reference solution."}
    )
    answer_format: str = field(
        default="plain", metadata={"help": "task=file: 'plain' or 'gsm8k' ('#### N')."}
    )
    gsm8k_dir: str | None = field(default=None, metadata={"help": "task=gsm8k: folder of train/test.jsonl."})


def _cap(dataset: Dataset, n: int) -> Dataset:
    return dataset.select(range(min(n, len(dataset)))) if n else dataset


def load_task(config: TaskConfig, split: str) -> Dataset:
    """Rows (``question``, ``answer``, ``solution`` when known) of ``split`` ("train" or "eval")."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    train = split == "train"
    if config.task == "arithmetic":
        train_rows = arithmetic_dataset(config.num_train, config.task_seed, config)
        if train:
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
    if config.task == "gsm8k":
        from llmac.data.gsm8k import load_gsm8k

        data = load_gsm8k("train" if train else "test", data_dir=config.gsm8k_dir)
        return _cap(data, config.num_train if train else config.num_eval)
    if config.task == "file":
        from llmac.data.loading import PromptDataConfig, load_prompts

        path = config.train_path if train else config.eval_path
        if not path:
            raise ValueError(f"task=file needs --{'train' if train else 'eval'}_path")
        data_config = PromptDataConfig(
            path=path,
            question_field=config.question_field,
            answer_field=config.answer_field,
            solution_field=config.solution_field,
            answer_format=config.answer_format,
        )
        return _cap(load_prompts(data_config), config.num_train if train else config.num_eval)
    raise ValueError(f"unknown task {config.task!r}: expected 'arithmetic', 'gsm8k' or 'file'")
