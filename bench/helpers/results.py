"""Where every bench records its figures: ``bench/results/<name>.json``, with the command that made them.

The file holds the figures, the exact command line (run from the repository root), the date, the
machine (cores, load average before and after), the git commit and llmac's code version, and the
parsed arguments, so the README can quote a figure with the command that reproduces it. A ``--quick``
run writes ``<name>-quick.json`` so it never replaces a full run's figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmac.files import write_text_atomically

REPO = Path(__file__).resolve().parent.parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def add_results_arg(parser: argparse.ArgumentParser) -> None:
    """``--results``: where the JSON goes (default ``bench/results/<name>[-quick].json``)."""
    parser.add_argument(
        "--results",
        default=None,
        help="JSON file of the figures and the command (default bench/results/<bench>[-quick].json).",
    )


def start_output(threads: int | None) -> None:
    """Line-buffered stdout (progress reaches a log as it happens) and ``threads`` torch threads if set."""
    sys.stdout.reconfigure(line_buffering=True)
    if threads:
        import torch

        torch.set_num_threads(threads)


def format_value(value) -> str:
    """A figure as the summary line prints it: floats to 4 significant digits, the rest as ``str``."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def summary_line(figures: dict) -> str:
    """``key=value ...``: the parseable last line every bench prints."""
    return " ".join(f"{key}={format_value(value)}" for key, value in figures.items())


def parse_summary_line(line: str) -> dict[str, str]:
    """The inverse of :func:`summary_line` (values stay strings)."""
    return dict(item.split("=", 1) for item in line.split())


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this bench, as typed from the repository root."""
    script = Path(sys.argv[0]).resolve()
    python = Path(sys.executable)
    parts = [_relative(python), _relative(script), *(sys.argv[1:] if argv is None else argv)]
    return shlex.join(parts)


def _relative(path: Path) -> str:
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def git_state() -> dict:
    """The commit checked out and whether the code that runs (llmac/, bench/) differs from it."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or None
    changed = git("status", "--porcelain", "--", "llmac", "bench") if commit else ""
    return {"commit": commit, "uncommitted_changes": bool(changed)}


def machine() -> dict:
    """The cores this process may use, the load on them and the platform."""
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages (other jobs on the cores make every time longer)."""
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class BenchRecord:
    """One run of a bench: created when it starts, :meth:`save` writes the figures when it ends."""

    name: str = field(metadata={"help": "The bench's name: bench/results/<name>.json."})
    args: argparse.Namespace = field(metadata={"help": "The bench's parsed arguments."})
    started_at: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        metadata={"help": "UTC start time."},
    )
    started: float = field(default_factory=time.perf_counter, metadata={"help": "perf_counter at start."})
    load_at_start: list[float] = field(default_factory=load_average, metadata={"help": "Load average."})

    @property
    def path(self) -> Path:
        if getattr(self.args, "results", None):
            return Path(self.args.results)
        suffix = "-quick" if getattr(self.args, "quick", False) else ""
        return RESULTS_DIR / f"{self.name}{suffix}.json"

    def save(self, figures: dict, details: dict | None = None) -> Path:
        """Write the figures (and any ``details``) with the command and the machine; returns the path."""
        from llmac.fingerprints import code_version

        record = {
            "bench": self.name,
            "command": command_line(),
            "figures": figures,
            "summary": summary_line(figures),
            "date": self.started_at,
            "wall_seconds": round(time.perf_counter() - self.started, 1),
            "machine": {**machine(), "load_at_start": self.load_at_start, "load_at_end": load_average()},
            "git": git_state(),
            "code_version": code_version(),
            "args": {k: v for k, v in vars(self.args).items() if k != "run_arm"},
            "details": details or {},
        }
        return write_text_atomically(self.path, json.dumps(record, indent=1, default=str) + "\n")
