"""What a bench keeps between runs (its actors, its finished arms), reused only when provably the same.

A cached artifact is accepted only when it is complete (a model folder whose weights and tokenizer
load: :func:`llmac.fingerprints.is_complete_model`) and its stamp carries the key of the inputs it
was made from (:func:`llmac.fingerprints.inputs_key`: content fingerprints of the models it started
from, the settings, and llmac's code version), never because a path exists. A folder the bench did
not write (no stamp) is never deleted: the bench stops with a message instead.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from llmac.fingerprints import read_stage_stamp, stage_done, write_stage_stamp


class CacheError(RuntimeError):
    """A folder the bench would write holds something it did not write."""


def keyed_folder(parent: Path, name: str, key: str) -> Path:
    """``<parent>/<name>-<key prefix>``: artifacts of different inputs never share a folder."""
    return parent / f"{name}-{key[:12]}"


def remove_own_folder(folder: Path) -> None:
    """Delete ``folder`` if the bench wrote it (it has a stage stamp); refuse anything else."""
    if not folder.exists():
        return
    if read_stage_stamp(folder) is None:
        raise CacheError(
            f"{folder} exists but was not written by this bench (no stage stamp); "
            "move it away or choose another --out"
        )
    shutil.rmtree(folder)


def cached_model(folder: Path, key: str, build: Callable[[Path], object], **details) -> tuple[Path, bool]:
    """``(folder, reused)``: the complete model stamped ``key`` there, else one ``build(tmp)`` makes.

    ``build`` writes a model folder into a temporary sibling, which is stamped and renamed into
    place, so a kill leaves either no model or a whole one.
    """
    if stage_done(folder, key, kind="model"):
        return folder, True
    remove_own_folder(folder)  # stamped but incomplete or of other inputs: the bench's own, rebuilt
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        build(staging)
        write_stage_stamp(staging, key, **details)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder, False


def start_artifact(folder: Path, key: str, **details) -> None:
    """Claim ``folder`` for a new artifact of inputs ``key`` (an earlier one of the bench's is removed)."""
    remove_own_folder(folder)
    folder.mkdir(parents=True)
    write_stage_stamp(folder, key, state="running", **details)


def finish_artifact(folder: Path, key: str, **details) -> None:
    """Mark the artifact in ``folder`` complete."""
    write_stage_stamp(folder, key, state="done", **details)
