"""``metrics.jsonl``: one JSON line per training iteration, appended as the run goes.

Lines are flushed and fsynced as they are written, so a killed run keeps every finished iteration;
a resumed run first drops the lines after its checkpoint, so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from llmac.files import write_text_atomically

FILE_NAME = "metrics.jsonl"


class MetricsLog:
    """Append-only metrics of a run (written by the main process only)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True) -> None:
        self.path = Path(run_dir) / FILE_NAME
        self.enabled = enabled

    def truncate_after(self, iteration: int) -> None:
        """Drop the lines of iterations after ``iteration`` (and any half-written last line)."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a kill is always the last one
            if record.get("iteration", 0) <= iteration:
                kept.append(line)
        write_text_atomically(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
