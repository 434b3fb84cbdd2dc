"""Labelled solutions for critic training: read, validate, encode at the positions scoring reads.

Rows are in the Math-Shepherd / TRL PRM layout (``prompt``, ``completions`` = clean steps, ``labels``
= soft MC labels in [0, 1], ``hard_labels`` = 0/1). Each becomes the critic's input exactly as
:func:`llmac.critic.scoring.encode_example` builds it, with a target at every step end and
``IGNORE_INDEX`` elsewhere. Bad rows are reported together, each by file, line and field.
"""

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict, load_from_disk

from llmac.critic.scoring import encode_example, pad_batch, response_text
from llmac.data.loading import DataError, ProblemLog, read_jsonl

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_TOKENIZER_MISMATCH = (
    "does not round-trip through the critic's tokenizer (decode(encode(text)) != text): the critic's "
    "tokenizer does not match the data"
)


@dataclass
class EncodedData:
    """Encoded rows (``input_ids`` + per-token ``labels``) and what encoding left out."""

    dataset: Dataset
    prompts: list[str]
    num_steps: int  # supervised step ends
    dropped_steps: int  # step ends past max_length
    dropped_rows: int  # rows left with no supervised step

    def summary(self) -> str:
        text = f"{len(self.dataset)} solutions, {self.num_steps} supervised steps"
        if self.dropped_steps:
            text += (
                f"; {self.dropped_steps} steps past max_length dropped from the loss "
                f"({self.dropped_rows} solutions left with none, skipped)"
            )
        return text


def read_labelled_rows(path: str | Path) -> tuple[ProblemLog, list[tuple[int, Any]]]:
    """``(problem log, [(row number, row)])`` of a save_to_disk folder, .jsonl (line numbers) or .parquet file."""
    path = Path(path).expanduser()
    if path.is_dir():
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            raise DataError(
                f"{path}: a DatasetDict (splits: {', '.join(loaded)}); give the folder of one split"
            )
        return ProblemLog(str(path)), list(enumerate(loaded.to_list(), start=1))
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        log = ProblemLog(str(path), unit="line")
        return log, read_jsonl(path, log)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return ProblemLog(str(path)), list(enumerate(pq.read_table(path).to_pylist(), start=1))
    raise DataError(
        f"{path}: unsupported labelled-data file {suffix!r} (use a save_to_disk folder, .jsonl or .parquet)"
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float)  # booleans too: TRL's stepwise datasets store labels as True/False


def validate_row(
    row: Any, number: int, log: ProblemLog, delimiter: str, label_type: str
) -> tuple[str, list[str], list[float]] | None:
    """``(question, steps, targets)`` of a labelled row, or None after logging its problems."""
    if not isinstance(row, dict):
        log.add(number, None, "is not an object", f"got {type(row).__name__}")
        return None
    target_field = "labels" if label_type == "soft" else "hard_labels"
    missing = [name for name in ("prompt", "completions", target_field) if row.get(name) is None]
    for name in missing:
        log.add(number, name, "is missing")
    if missing:
        return None
    ok = True
    question, steps = row["prompt"], row["completions"]
    if not isinstance(question, str) or not question.strip():
        log.add(number, "prompt", "is not a non-empty string", f"got {question!r:.60}")
        ok = False
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        log.add(number, "completions", "is not a list of strings")
        return None
    if not steps:
        log.add(number, "completions", "has zero steps")
        return None
    for t, step in enumerate(steps):
        if not step.strip():
            log.add(number, "completions", "has a step with no visible text", f"step {t}: {step!r}")
            ok = False
        elif delimiter in step:
            log.add(
                number,
                "completions",
                "has a step containing the delimiter (it would split into several steps)",
                f"step {t}: {step!r:.60}, delimiter {delimiter!r}",
            )
            ok = False
    for name in ("labels", "hard_labels"):
        if name not in row or row[name] is None:
            continue
        values = row[name]
        if not isinstance(values, list) or not all(_is_number(v) for v in values):
            log.add(number, name, "is not a list of numbers")
            ok = False
            continue
        if len(values) != len(steps):
            log.add(
                number, name, "count differs from the step count", f"{len(values)} labels, {len(steps)} steps"
            )
            ok = False
        if name == "labels":
            bad = next((t for t, v in enumerate(values) if not 0 <= v <= 1), None)  # NaN fails both
            if bad is not None:
                log.add(number, name, "has a value outside [0, 1]", f"step {bad}: {values[bad]}")
                ok = False
        else:
            bad = next((t for t, v in enumerate(values) if v not in (0, 1)), None)
            if bad is not None:
                log.add(number, name, "has a value that is not 0 or 1", f"step {bad}: {values[bad]}")
                ok = False
    if not ok:
        return None
    return question, list(steps), [float(v) for v in row[target_field]]


def round_trips(tokenizer, text: str) -> bool:
    """Whether ``tokenizer`` encodes ``text`` losslessly (decoding its tokens gives ``text`` back)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) == text


def encode_row(
    tokenizer,
    question: str,
    steps: Sequence[str],
    targets: Sequence[float],
    delimiter: str,
    max_length: int | None = None,
    last_step_only: bool = False,
) -> tuple[dict, int]:
    """``({"input_ids", "labels"}, steps dropped)``: targets at step ends, -100 elsewhere.

    Steps ending at or past ``max_length`` are dropped; with ``last_step_only`` only the final step
    keeps its target (and is dropped if it does not fit).
    """
    example = encode_example(tokenizer, question, steps, delimiter)
    if len(example.step_positions) != len(targets):
        raise ValueError(
            f"the solution splits into {len(example.step_positions)} steps but has {len(targets)} labels"
        )
    supervised = list(zip(example.step_positions, targets, strict=True))
    if last_step_only:
        supervised = supervised[-1:]
    input_ids = example.input_ids
    if max_length is not None and len(input_ids) > max_length:
        input_ids = input_ids[:max_length]
    kept = [(pos, y) for pos, y in supervised if pos < len(input_ids)]
    labels = [float(IGNORE_INDEX)] * len(input_ids)
    for pos, y in kept:
        labels[pos] = float(y)
    return {"input_ids": list(input_ids), "labels": labels}, len(supervised) - len(kept)


def load_labelled_data(
    path: str | Path,
    tokenizer,
    delimiter: str,
    label_type: str = "soft",
    max_length: int | None = None,
    last_step_only: bool = False,
) -> EncodedData:
    """Validate and encode a labelled-data file; raises one :class:`DataError` listing the bad rows."""
    log, rows = read_labelled_rows(path)
    if not rows and not log.problems:
        raise DataError(f"{log.source}: no rows")
    valid = [
        (number, checked)
        for number, row in rows
        if (checked := validate_row(row, number, log, delimiter, label_type))
    ]
    log.raise_if_any()
    records, prompts = [], []
    num_steps = dropped_steps = dropped_rows = 0
    for number, (question, steps, targets) in valid:
        text_fields = (("prompt", question), ("completions", response_text(steps, delimiter)))
        unencodable = [name for name, text in text_fields if not round_trips(tokenizer, text)]
        for name in unencodable:
            log.add(number, name, _TOKENIZER_MISMATCH)
        if unencodable:
            continue
        try:
            record, dropped = encode_row(
                tokenizer, question, steps, targets, delimiter, max_length, last_step_only
            )
        except ValueError as err:
            log.add(number, "completions", "does not split into its steps", str(err))
            continue
        dropped_steps += dropped
        kept = sum(y != IGNORE_INDEX for y in record["labels"])
        if kept == 0:
            dropped_rows += 1
            continue
        num_steps += kept
        records.append(record)
        prompts.append(question)
    log.raise_if_any()
    if not records:
        raise DataError(f"{log.source}: no solution has a step within max_length={max_length}")
    dataset = Dataset.from_dict(
        {"input_ids": [r["input_ids"] for r in records], "labels": [r["labels"] for r in records]}
    )
    return EncodedData(dataset, prompts, num_steps, dropped_steps, dropped_rows)


def split_by_prompt(data: EncodedData, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(train, eval)``: ``fraction`` of the distinct prompts (at least one) and all their solutions held out."""
    unique = sorted(set(data.prompts))
    if len(unique) < 2:
        raise DataError(f"cannot hold out eval_fraction={fraction} of 1 distinct prompt; give eval_data")
    random.Random(seed).shuffle(unique)
    held = set(unique[: min(len(unique) - 1, max(1, round(fraction * len(unique))))])
    eval_rows = [i for i, p in enumerate(data.prompts) if p in held]
    train_rows = [i for i, p in enumerate(data.prompts) if p not in held]
    return data.dataset.select(train_rows), data.dataset.select(eval_rows)


@dataclass
class CriticCollator:
    """Right-pads ``input_ids`` (with ``pad_id``) and ``labels`` (with -100) and builds attention masks."""

    pad_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([f["input_ids"] for f in features], self.pad_id)
        labels = torch.full(ids.shape, float(IGNORE_INDEX), dtype=torch.float32)
        for row, f in enumerate(features):
            labels[row, : len(f["labels"])] = torch.tensor(f["labels"], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
