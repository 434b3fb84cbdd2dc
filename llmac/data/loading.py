"""Loading prompt datasets: any file or dataset, mapped to the columns every pipeline reads.

The canonical record is a ``datasets.Dataset`` row with ``question`` (str), ``answer`` (str, the gold
final answer) and, when the source has one, ``solution`` (str, a reference solution, one step per
line). Bad rows are collected and reported together in one :class:`DataError` that names the file,
the row (the line number for JSONL) and the field, instead of failing on the first or dropping them.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from llmac.config import option
from llmac.errors import LlmacError
from llmac.validation import check_fields

ANSWER_FORMATS = ("plain", "gsm8k")
GSM8K_ANSWER_MARK = "####"
# GSM8K writes calculator calls inline: "48/2=<<48/2=24>>24". A solution cut off mid-call (model
# outputs hit their length limit) leaves an unclosed "<<..." at the very end.
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>|<<[^<>]*$")
_MAX_LISTED_PROBLEMS = 5
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_SAVE_TO_DISK_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")


class DataError(LlmacError, ValueError):
    """Bad input data. The message names the file or dataset, the row and the field."""


@dataclass(kw_only=True)
class RecordFields:
    """Which fields of a data file's records hold the question, the gold answer and a solution."""

    question_field: str = option("question", "Field of the data holding the question text.")
    answer_field: str = option("answer", "Field of the data holding the gold answer.")
    solution_field: str | None = option(
        None,
        "Field of the data holding a step-by-step reference solution. None: no solution column, "
        "except for answer_format 'gsm8k', whose solution is the answer text before '####'.",
    )
    answer_format: str = option(
        "plain",
        "'plain': the answer field is the gold answer. 'gsm8k': the gold answer is the text after "
        "'#### ' in the answer field (commas removed).",
        choices=ANSWER_FORMATS,
    )


@dataclass
class PromptDataConfig(RecordFields):
    """Where prompts come from (and which fields hold the question, the gold answer and a solution)."""

    path: str = option(
        help="A .jsonl, .json or .parquet file; a directory written by `Dataset.save_to_disk` (or a "
        "folder of data files); or a dataset name for `datasets.load_dataset` (offline: local cache only)."
    )
    split: str = option(
        "train",
        "Split to read from a saved DatasetDict, a data folder or a named dataset (ignored for files).",
    )
    name: str | None = option(None, "Configuration name of a named dataset (e.g. 'main' for openai/gsm8k).")
    max_samples: int | None = option(
        None, "Keep at most this many rows (after shuffling); None keeps all.", range="[0, inf)"
    )
    shuffle: bool = option(False, "Shuffle the rows before taking max_samples.")
    seed: int = option(0, "Seed of the shuffle.", range="[0, inf)")
    cache_dir: str | None = option(None, "Cache directory for `datasets.load_dataset` (default: HF's).")

    def __post_init__(self) -> None:
        check_fields(self)


class ProblemLog:
    """Problems found in one source, raised together as one :class:`DataError`."""

    def __init__(self, source: str, unit: str = "row") -> None:
        self.source = source
        self.unit = unit
        self.problems: list[tuple[int, str | None, str, str]] = []

    def add(self, row: int, field_name: str | None, problem: str, detail: str = "") -> None:
        """Record ``problem`` (a short, countable phrase) at 1-based ``row``; ``detail`` varies per row."""
        self.problems.append((row, field_name, problem, detail))

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        kinds = Counter(_describe(field_name, problem) for _, field_name, problem, _ in self.problems)
        counts = ", ".join(f"{n} x {kind}" for kind, n in kinds.most_common())
        listed = [
            f"  {self.unit} {row}: {_describe(field_name, problem)}{f' ({detail})' if detail else ''}"
            for row, field_name, problem, detail in self.problems[:_MAX_LISTED_PROBLEMS]
        ]
        rows = len({row for row, *_ in self.problems})
        raise DataError(
            f"{self.source}: {len(self.problems)} problem(s) in {rows} {self.unit}(s): {counts}. "
            f"First {len(listed)}:\n" + "\n".join(listed)
        )


def _describe(field_name: str | None, problem: str) -> str:
    return f"field '{field_name}' {problem}" if field_name else problem


# ---------------------------------------------------------------------------------------------- formats


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K's ``<<48/2=24>>`` calculator annotations (and an unclosed one at the end)."""
    return _CALCULATOR_ANNOTATION.sub("", text)


def split_gsm8k_answer(text: str) -> tuple[str, str]:
    """``(reasoning, gold)`` of a GSM8K answer ``"...\\n#### 1,080"``; the gold has its commas removed.

    Raises ``ValueError`` when there is no ``####`` marker or nothing after it.
    """
    reasoning, mark, gold = text.rpartition(GSM8K_ANSWER_MARK)
    if not mark:
        raise ValueError("has no '#### ' final-answer marker")
    gold = gold.strip().replace(",", "")
    if not gold:
        raise ValueError("has nothing after '####'")
    return reasoning, gold


def gsm8k_solution(reasoning: str) -> str:
    """A GSM8K reasoning text as a clean solution: annotations stripped, one non-blank step per line."""
    lines = (line.strip() for line in strip_calculator_annotations(reasoning).split("\n"))
    return "\n".join(line for line in lines if line)


# ---------------------------------------------------------------------------------------------- sources


def read_jsonl(path: Path, log: ProblemLog) -> list[tuple[int, Any]]:
    """``(line number, parsed value)`` of every non-blank line; lines that are not JSON go to ``log``."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                log.add(number, None, "is not valid JSON", str(exc))
    return rows


def _read_file(path: Path) -> tuple[ProblemLog, list[tuple[int, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        log = ProblemLog(str(path), unit="line")
        return log, read_jsonl(path, log)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # JSON lines under a .json name, as `datasets` accepts
            log = ProblemLog(str(path), unit="line")
            return log, read_jsonl(path, log)
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return ProblemLog(str(path)), list(enumerate(data, start=1))
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return ProblemLog(str(path)), list(enumerate(pq.read_table(path).to_pylist(), start=1))
    raise DataError(f"{path}: unsupported file type {suffix!r} (use {', '.join(_FILE_SUFFIXES)})")


def _load_dataset_source(config: PromptDataConfig, path: Path) -> tuple[str, Dataset]:
    """A saved dataset directory, a folder of data files, or a named dataset, as one split."""
    if path.is_dir() and any((path / marker).exists() for marker in _SAVE_TO_DISK_MARKERS):
        source = str(path)
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if config.split not in loaded:
                raise DataError(f"{source}: no split {config.split!r} (splits: {', '.join(loaded)})")
            loaded = loaded[config.split]
        return source, loaded
    source = str(path) if path.is_dir() else config.path
    try:
        loaded = load_dataset(source, name=config.name, split=config.split, cache_dir=config.cache_dir)
    except Exception as exc:  # `datasets` raises many types here; all mean "cannot load this"
        raise DataError(
            f"{source}: could not load split {config.split!r} with datasets.load_dataset "
            f"(named datasets load offline only from the local cache): {type(exc).__name__}: {exc}"
        ) from exc
    return f"{source} [{config.split}]", loaded


def _looks_like_local_path(path: str) -> bool:
    """True for what can only be a local path (so a missing one is an error, not a dataset name)."""
    return path.lower().endswith(_FILE_SUFFIXES) or path.startswith(("/", ".", "~"))


def _dataset_rows(source: str, dataset: Dataset, fields: list[str]) -> list[tuple[int, Any]]:
    missing = [name for name in fields if name not in dataset.column_names]
    if missing:
        raise DataError(
            f"{source}: no column {', '.join(repr(m) for m in missing)} "
            f"(columns: {', '.join(dataset.column_names)})"
        )
    columns = dataset.select_columns(fields).to_dict()
    return [(i + 1, {name: columns[name][i] for name in fields}) for i in range(len(dataset))]


# ---------------------------------------------------------------------------------------------- loading


def _text_problem(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string"
    if not value.strip():
        return "is empty"
    return None


def _canonical_row(row: Any, number: int, config: PromptDataConfig, log: ProblemLog) -> dict[str, str] | None:
    """The canonical columns of one source row, or None after logging what is wrong with it."""
    if not isinstance(row, dict):
        log.add(number, None, "is not an object", f"got {type(row).__name__}")
        return None
    out: dict[str, str] = {}
    ok = True
    for name in (config.question_field, config.answer_field, config.solution_field):
        if name is not None and name not in row:
            log.add(number, name, "is missing")
            ok = False
    if not ok:
        return None

    question = row[config.question_field]
    if problem := _text_problem(question):
        log.add(number, config.question_field, problem)
        ok = False
    out["question"] = question

    answer = row[config.answer_field]
    if config.answer_format == "plain" and isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)  # numeric gold answers are common in JSON
    if problem := _text_problem(answer):
        log.add(number, config.answer_field, problem)
        ok = False
    elif config.answer_format == "gsm8k":
        try:
            reasoning, answer = split_gsm8k_answer(answer)
        except ValueError as exc:
            log.add(number, config.answer_field, str(exc))
            ok = False
        else:
            if config.solution_field is None:
                out["solution"] = gsm8k_solution(reasoning)
    else:
        answer = answer.strip()
    out["answer"] = answer

    if config.solution_field is not None:
        solution = row[config.solution_field]
        if problem := _text_problem(solution):
            log.add(number, config.solution_field, problem)
            ok = False
        out["solution"] = solution
    return out if ok else None


def load_prompts(config: PromptDataConfig) -> Dataset:
    """Rows of ``config.path`` as a Dataset with ``question``, ``answer`` and (if any) ``solution``.

    Raises :class:`DataError` listing the first bad rows (with counts per kind of problem).
    """
    path = Path(config.path).expanduser()
    if path.is_file():
        log, rows = _read_file(path)
    elif path.is_dir() or not _looks_like_local_path(config.path):
        source, dataset = _load_dataset_source(config, path)
        fields = [f for f in (config.question_field, config.answer_field, config.solution_field) if f]
        log, rows = ProblemLog(source), _dataset_rows(source, dataset, fields)
    else:
        raise DataError(f"{path}: no such file or directory")

    records = [_canonical_row(row, number, config, log) for number, row in rows]
    log.raise_if_any()
    if not records:
        raise DataError(f"{log.source}: no rows")

    if config.shuffle:
        random.Random(config.seed).shuffle(records)
    if config.max_samples is not None:
        records = records[: config.max_samples]
    columns = ["question", "answer"] + (["solution"] if records and "solution" in records[0] else [])
    return Dataset.from_dict({name: [r[name] for r in records] for name in columns})


# ---------------------------------------------------------------------------------------------- prompts


def format_prompt(tokenizer: Any, question: str, system_prompt: str | None = None) -> str:
    """``question`` in the tokenizer's chat template, ending where the assistant's answer starts.

    A tokenizer without a chat template gets the plain question (after the system prompt, if any).
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return question if system_prompt is None else f"{system_prompt}\n\n{question}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompts(
    dataset: Dataset,
    tokenizer: Any,
    system_prompt: str | None = None,
    question_column: str = "question",
    prompt_column: str = "prompt",
) -> Dataset:
    """``dataset`` with a ``prompt_column`` holding each question formatted by :func:`format_prompt`."""
    prompts = [format_prompt(tokenizer, q, system_prompt) for q in dataset[question_column]]
    if prompt_column in dataset.column_names:
        dataset = dataset.remove_columns(prompt_column)
    return dataset.add_column(prompt_column, prompts)


# ---------------------------------------------------------------------------------------------- records


def load_records(path: str | Path) -> Dataset:
    """A dataset llmac wrote (a ``save_to_disk`` folder) or a ``.jsonl``/``.json``/``.parquet`` file."""
    path = Path(path)
    if path.is_dir() and any((path / marker).exists() for marker in _SAVE_TO_DISK_MARKERS):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            raise DataError(f"{path}: holds several splits ({', '.join(loaded)}); give the split's folder")
        return loaded
    if path.is_file() and path.suffix.lower() in (".jsonl", ".json"):
        with open(path, "rb") as stream:
            if not any(line.strip() for line in stream):  # stops at the first row
                raise DataError(f"{path}: empty file, no rows")
        return Dataset.from_json(str(path))
    if path.is_file() and path.suffix.lower() == ".parquet":
        return Dataset.from_parquet(str(path))
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"{path}: not a saved dataset folder nor a .jsonl/.json/.parquet file")
