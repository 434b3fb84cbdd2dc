"""GSM8K (MIT), loaded the way users load it, and OpenAI's released model solutions to its test set.

:func:`load_gsm8k` reads ``datasets.load_dataset("openai/gsm8k", "main")`` by default (TRL's
``dataset_name`` / ``dataset_config`` / split names); offline, a local folder with the original
``train.jsonl`` / ``test.jsonl`` (``data_dir``, or ``$LLMAC_GSM8K_DIR``) is read instead. Rows are
``{"question", "answer"}`` with the gold after ``#### ``.
``model_solutions.jsonl`` (not on the Hub; in ``$LLMAC_GSM8K_DIR`` or ``../shared/data/gsm8k``) holds
660 test questions, each with four sampled solutions (6B and 175B models, finetuning and verification
runs) as ``{"solution": str, "is_correct": bool}``.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, load_dataset

from llmac.data.loading import (
    DataError,
    ProblemLog,
    PromptDataConfig,
    gsm8k_solution,
    load_prompts,
    read_jsonl,
    split_gsm8k_answer,
    strip_calculator_annotations,
)

GSM8K_DIR_ENV = "LLMAC_GSM8K_DIR"
GSM8K_DATASET = "openai/gsm8k"
GSM8K_CONFIG = "main"
MODEL_SOLUTION_SOURCES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
OFFLINE_HINT = (
    f"offline, pass --gsm8k_dir (or set {GSM8K_DIR_ENV}) to a folder holding GSM8K's train.jsonl and "
    "test.jsonl"
)


def default_gsm8k_dir() -> Path:
    """Where the local GSM8K files are: ``$LLMAC_GSM8K_DIR``, else ``../shared/data/gsm8k`` next to the
    repository root (this checkout's copy; the model solutions are only there)."""
    if env := os.environ.get(GSM8K_DIR_ENV):
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k"


def _gsm8k_file(name: str, data_dir: str | Path | None) -> Path:
    path = Path(data_dir or default_gsm8k_dir()) / name
    if not path.is_file():
        raise DataError(f"{path}: GSM8K file not found (pass data_dir or set {GSM8K_DIR_ENV})")
    return path


def load_gsm8k(
    split: str = "train",
    data_dir: str | Path | None = None,
    dataset_name: str = GSM8K_DATASET,
    dataset_config: str | None = GSM8K_CONFIG,
) -> Dataset:
    """GSM8K ``split`` with ``question``, ``answer`` (gold, commas removed) and ``solution`` columns.

    From ``data_dir`` (``<split>.jsonl``) when given, else from ``$LLMAC_GSM8K_DIR``, else
    ``datasets.load_dataset(dataset_name, dataset_config, split=split)``. The solution is the answer
    text before ``####`` without calculator annotations, one step a line, closed by a
    ``The answer is N`` line so a model trained on it states an answer the verifier reads.
    """
    folder = data_dir or os.environ.get(GSM8K_DIR_ENV)
    if folder:
        path = _gsm8k_file(f"{split}.jsonl", folder)
        rows = load_prompts(PromptDataConfig(path=str(path), answer_format="gsm8k"))
    else:
        rows = _gsm8k_rows(*_load_hub_split(dataset_name, dataset_config, split))
    return rows.map(lambda row: {"solution": f"{row['solution'].rstrip()}\nThe answer is {row['answer']}"})


def _load_hub_split(name: str, config: str | None, split: str) -> tuple[str, Dataset]:
    """``(source, rows)`` of ``load_dataset(name, config, split=split)``; a failure is one line that
    names the offline option (the cause is kept for ``--debug``)."""
    source = f"{name} ({f'config {config!r}, ' if config else ''}split {split!r})"
    try:
        return source, load_dataset(name, config, split=split)
    except Exception as error:  # `datasets` raises many kinds here (network, missing split, bad name)
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        raise DataError(
            f"{source}: datasets.load_dataset failed ({type(error).__name__}: {reason}); {OFFLINE_HINT}"
        ) from error


def _gsm8k_rows(source: str, dataset: Dataset) -> Dataset:
    """``question``, gold ``answer`` and worked ``solution`` of ``dataset``'s rows, in GSM8K's layout."""
    missing = [name for name in ("question", "answer") if name not in dataset.column_names]
    if missing:
        raise DataError(
            f"{source}: no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(dataset.column_names)}); GSM8K rows hold 'question' and 'answer' "
            "ending in '#### N'"
        )
    log = ProblemLog(source)
    columns: dict[str, list[str]] = {"question": [], "answer": [], "solution": []}
    for number, (question, answer) in enumerate(zip(dataset["question"], dataset["answer"], strict=True), 1):
        if not isinstance(question, str) or not question.strip():
            log.add(number, "question", "is empty or not a string")
            continue
        if not isinstance(answer, str):
            log.add(number, "answer", "is not a string")
            continue
        try:
            reasoning, gold = split_gsm8k_answer(answer)
        except ValueError as error:
            log.add(number, "answer", str(error))
            continue
        columns["question"].append(question)
        columns["answer"].append(gold)
        columns["solution"].append(gsm8k_solution(reasoning))
    log.raise_if_any()
    if not columns["question"]:
        raise DataError(f"{source}: no rows")
    return Dataset.from_dict(columns)


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
