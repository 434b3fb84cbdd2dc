"""The demo's stages: each runs once per key and is skipped when its finished output is there.

A stage's key covers everything that changes its output (content fingerprints of the models and
datasets it reads, its settings, llmac's code version). An output llmac wrote from other inputs, or
left half-written, is replaced; a folder llmac did not write is moved aside (``<name>.stale-<n>``),
never deleted; an interrupted stage with the same key is resumed by its trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from datasets import Dataset, load_from_disk

from llmac.files import write_text_atomically
from llmac.fingerprints import STAGE_STAMP, path_fingerprint, read_stage_stamp, stage_done, write_stage_stamp
from llmac.outputs import read_marker
from llmac.rollouts import save_dataset_atomically

logger = logging.getLogger(__name__)

_OUTPUT_FIELDS = ("output_dir", "logging_dir", "run_name")  # where a stage writes, not what it computes
_INPUT_FIELDS = (  # fields naming a model, dataset or file a stage reads
    "model_name_or_path", "train_path", "eval_path", "gsm8k_dir", "init_from", "train_data", "eval_data",
    "value_model", "process_reward_model", "chat_template_path", "deepspeed",
)  # fmt: skip


def config_inputs(config) -> dict:
    """A config's fields for a stage key: output paths dropped, local inputs keyed by their content."""
    values = config.to_dict() if hasattr(config, "to_dict") else asdict(config)
    return {
        name: {"content": path_fingerprint(value)} if _is_local_input(name, value) else value
        for name, value in values.items()
        if name not in _OUTPUT_FIELDS
    }


def _is_local_input(name: str, value) -> bool:
    return name in _INPUT_FIELDS and isinstance(value, str) and bool(value) and Path(value).exists()


def rows_key(rows: Dataset) -> str:
    """The content of in-memory rows, for a key (the demo's task splits are small)."""
    return hashlib.sha256(json.dumps(rows.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def open_stage(path: Path, key: str, parts: Sequence[str] = (".",)) -> bool:
    """True if ``path`` holds this stage's finished output; otherwise clears the way to make it.

    Only an unfinished output of a run with this very key (its key in the ``running`` stamp beside
    it) is kept, for the stage's trainer to resume. Anything else at ``path`` goes: llmac's own
    output (its stage stamp or output marker: made from other inputs or code, or damaged) is
    deleted; a folder llmac did not write is renamed aside, never deleted.
    """
    if stage_done(path, key, parts=parts):
        logger.info("%s is done (same inputs and code): skipping it", path)
        return True
    if not path.exists() or _running_key(path) == key or (path.is_dir() and not any(path.iterdir())):
        return False
    if read_stage_stamp(path) is not None or read_marker(path) is not None:
        # Renamed first, so a kill during the deletion leaves no half folder at ``path``.
        doomed = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:12]}")
        path.rename(doomed)
        shutil.rmtree(doomed)
        logger.warning("%s was made from other inputs or code, or is incomplete: redoing it", path)
    else:
        aside = _free_sibling(path, "stale")
        path.rename(aside)
        logger.warning("%s was not written by llmac: moved it to %s, and making it anew", path, aside)
    return False


def _running_stamp(path: Path) -> Path:
    # Beside the output, not in it: the trainer claims its output folder only if it is empty or its own.
    return path.with_name(f".{path.name}{STAGE_STAMP}")


def _running_key(path: Path) -> str | None:
    try:
        return json.loads(_running_stamp(path).read_text())["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _free_sibling(path: Path, tag: str) -> Path:
    number = 1
    while (candidate := path.with_name(f"{path.name}.{tag}-{number}")).exists():
        number += 1
    return candidate


def model_stage(path: Path, key: str, train: Callable[[], object], parts: Sequence[str] = (".",)) -> None:
    """Run ``train`` (which writes ``path``) unless ``path`` already holds its finished output."""
    if open_stage(path, key, parts):
        return
    write_text_atomically(_running_stamp(path), json.dumps({"key": key, "state": "running"}))
    train()
    write_stage_stamp(path, key)
    _running_stamp(path).unlink()
    if not stage_done(path, key, parts=parts):
        raise RuntimeError(f"{path}: the stage finished without a complete model in {list(parts)}")


def dataset_stage(path: Path, key: str, build: Callable[[Path], Dataset]) -> Dataset:
    """The dataset a stage saved at ``path`` with this ``key``, or ``build(shard_dir)``'s result saved there now.

    ``build`` keeps finished batches in a shard folder named after the key, so a killed stage
    resumes where it stopped and a stage with other inputs never meets its shards.
    """
    if open_stage(path, key):
        return load_from_disk(str(path))
    shards = path.with_name(f"{path.name}.shards-{key[:12]}")
    dataset = build(shards)
    save_dataset_atomically(dataset, path)
    write_stage_stamp(path, key)
    shutil.rmtree(shards, ignore_errors=True)  # llmac's own shards of this very key
    return dataset
