"""Copies of a saved model for fingerprint tests: the same bytes elsewhere, or one weight value changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file


def copy_with_new_mtimes(source: Path, dest: Path) -> Path:
    """A plain ``cp -r``: same bytes, fresh modification times."""
    shutil.copytree(source, dest, copy_function=shutil.copyfile)
    return dest


def nudge_one_weight(folder: Path, keep_mtime: bool = False) -> None:
    """Add 1.0 to the first value of the first tensor of ``folder/model.safetensors``, in place.

    The file keeps its size and header; ``keep_mtime`` restores its old modification time too.
    """
    path = folder / "model.safetensors"
    stat = path.stat()
    weights = load_file(path)
    weights[sorted(weights)[0]].view(-1)[0] += 1.0
    save_file(weights, path, metadata={"format": "pt"})
    assert path.stat().st_size == stat.st_size
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def nudged_copy(source: Path, dest: Path) -> Path:
    """``source`` copied to ``dest`` with one weight value changed: another model, same everything else."""
    nudge_one_weight(copy_with_new_mtimes(source, dest))
    return dest
