"""Resumable training state for llmac's own loops: save, find, load and prune checkpoints.

A checkpoint is ``<run_dir>/checkpoints/iter-<k>/``: accelerate's state (model, optimizer, RNG;
DeepSpeed's sharded files under ZeRO) plus ``trainer_state.json``. It is written under a temporary
name and renamed when complete (swapped in whole if that iteration was saved before), so a run
killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from llmac.outputs import move_into_place, recover_folder

STATE_FILE = "trainer_state.json"
_PREFIX = "iter-"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    for aside in checkpoint_dir(run_dir).glob(f".{_PREFIX}*.old-*"):
        recover_folder(aside.parent / aside.name.split(".old-")[0].removeprefix("."))
    found = [p for p in checkpoint_dir(run_dir).glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name.removeprefix(_PREFIX)), default=None)


def save_checkpoint(accelerator, run_dir: str | Path, iteration: int, state: dict, keep: int = 2) -> Path:
    """Save everything needed to resume after ``iteration``; every process must call it."""
    root = checkpoint_dir(run_dir)
    final = root / f"{_PREFIX}{iteration:06d}"
    partial = root / f".partial-{_PREFIX}{iteration:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # a save killed before; ours by its name
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps({"iteration": iteration, **state}, indent=2))
        move_into_place(partial, final, "checkpoint")
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore accelerate's state from ``path``; returns its ``trainer_state.json``."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def _prune(root: Path, keep: int) -> None:
    done = sorted((p for p in root.glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file()),
                  key=lambda p: int(p.name.removeprefix(_PREFIX)))  # fmt: skip
    for old in done[: max(len(done) - max(keep, 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
