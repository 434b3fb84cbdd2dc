"""GSM8K (MIT) in its original JSONL layout, and OpenAI's released model solutions to its test set.

``train.jsonl`` / ``test.jsonl`` rows are ``{"question", "answer"}`` with the gold after ``#### ``.
``model_solutions.jsonl`` holds 660 test questions, each with four sampled solutions (6B and 175B
models, finetuning and verification runs) as ``{"solution": str, "is_correct": bool}``.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset

from llmac.data.loading import (
    DataError,
    ProblemLog,
    PromptDataConfig,
    load_prompts,
    read_jsonl,
    strip_calculator_annotations,
)

GSM8K_DIR_ENV = "LLMAC_GSM8K_DIR"
GSM8K_SPLITS = ("train", "test")
MODEL_SOLUTION_SOURCES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def default_gsm8k_dir() -> Path:
    """``$LLMAC_GSM8K_DIR``, else ``../shared/data/gsm8k`` next to the repository root."""
    if env := os.environ.get(GSM8K_DIR_ENV):
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k"


def _gsm8k_file(name: str, data_dir: str | Path | None) -> Path:
    path = Path(data_dir or default_gsm8k_dir()) / name
    if not path.is_file():
        raise DataError(f"{path}: GSM8K file not found (pass data_dir or set {GSM8K_DIR_ENV})")
    return path


def load_gsm8k(split: str = "train", data_dir: str | Path | None = None) -> Dataset:
    """GSM8K ``split`` with ``question``, ``answer`` (gold, commas removed) and ``solution`` columns.

    The solution is the answer text before ``####`` without calculator annotations, one step a line,
    closed by a ``The answer is N`` line so a model trained on it states an answer the verifier reads.
    """
    if split not in GSM8K_SPLITS:
        raise ValueError(f"GSM8K split must be one of {GSM8K_SPLITS}, got {split!r}")
    path = _gsm8k_file(f"{split}.jsonl", data_dir)
    rows = load_prompts(PromptDataConfig(path=str(path), answer_format="gsm8k"))
    return rows.map(lambda row: {"solution": f"{row['solution'].rstrip()}\nThe answer is {row['answer']}"})


def load_gsm8k_model_solutions(
    path: str | Path | None = None,
    test_path: str | Path | None = None,
    strip_annotations: bool = True,
) -> Dataset:
    """One row per model solution: ``question``, ``answer``, ``solution``, ``source``, ``is_correct``.

    ``answer`` is the gold of the same question in ``test_path`` (matched by exact question text);
    ``source`` is one of :data:`MODEL_SOLUTION_SOURCES`. Solutions keep their lines (the last one is
    ``A: <answer>``); ``strip_annotations`` removes the ``<<...>>`` calculator annotations.
    """
    path = Path(path) if path is not None else _gsm8k_file("model_solutions.jsonl", None)
    test_path = Path(test_path) if test_path is not None else _gsm8k_file("test.jsonl", None)
    test = load_prompts(PromptDataConfig(path=str(test_path), answer_format="gsm8k"))
    gold = dict(zip(test["question"], test["answer"], strict=True))

    log = ProblemLog(str(path), unit="line")
    columns: dict[str, list] = {
        name: [] for name in ("question", "answer", "solution", "source", "is_correct")
    }
    for number, row in read_jsonl(path, log):
        if not isinstance(row, dict):
            log.add(number, None, "is not an object", f"got {type(row).__name__}")
            continue
        question = row.get("question")
        if not isinstance(question, str):
            log.add(number, "question", "is missing" if question is None else "is not a string")
            continue
        if question not in gold:
            log.add(number, "question", f"is not a question of {test_path}")
            continue
        for source in MODEL_SOLUTION_SOURCES:
            entry = row.get(source)
            if not isinstance(entry, dict):
                log.add(number, source, "is missing" if entry is None else "is not an object")
                continue
            solution, is_correct = entry.get("solution"), entry.get("is_correct")
            if not isinstance(solution, str) or not solution.strip():
                log.add(number, f"{source}.solution", "is missing, empty or not a string")
                continue
            if not isinstance(is_correct, bool):
                log.add(number, f"{source}.is_correct", "is missing or not a boolean")
                continue
            columns["question"].append(question)
            columns["answer"].append(gold[question])
            columns["solution"].append(
                strip_calculator_annotations(solution) if strip_annotations else solution
            )
            columns["source"].append(source)
            columns["is_correct"].append(is_correct)
    log.raise_if_any()
    if not columns["question"]:
        raise DataError(f"{path}: no rows")
    return Dataset.from_dict(columns)
