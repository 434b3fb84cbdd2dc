"""A watchdog that kills vLLM's engine processes when the process that owns them dies.

vLLM runs its engine core (and workers) in child processes and shuts them down from the owner, at
``close`` or interpreter exit. An owner killed with SIGKILL (an OOM kill, a scheduler's hard stop)
runs neither, and the children live on as orphans holding cores and accelerator memory, so the next
run on the machine starts short of both. :func:`start_reaper` launches this module as a tiny separate
process that polls the owner and kills the given processes once it is gone.

    python llmac/engines/reaper.py OWNER_PID OWNER_START_TIME PID:START_TIME [...]

It runs as a script, not with ``-m``, so it imports neither llmac nor torch: it starts in a blink
and holds a few MB.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence

import psutil

POLL_SECONDS = 0.5


def process_identity(pid: int) -> tuple[int, float]:
    """``(pid, start time)``: a pid alone may be reused by a new process after the old one exits."""
    return pid, psutil.Process(pid).create_time()


def is_alive(pid: int, start_time: float) -> bool:
    """Whether the process ``(pid, start_time)`` still runs (a zombie does not count)."""
    try:
        process = psutil.Process(pid)
        return process.create_time() == start_time and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_reaper(owner_pid: int, targets: Sequence[int]) -> subprocess.Popen:
    """Watch ``owner_pid`` from a separate process; when it dies, kill ``targets`` (still the same processes)."""
    owner = process_identity(owner_pid)
    identities = [process_identity(pid) for pid in targets]
    argv = [sys.executable, __file__, str(owner[0]), repr(owner[1])]
    argv += [f"{pid}:{start!r}" for pid, start in identities]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


def watch(owner: tuple[int, float], targets: Sequence[tuple[int, float]]) -> list[int]:
    """Wait for ``owner`` to die, then kill every target that still runs; returns the pids killed."""
    while is_alive(*owner):
        if not any(is_alive(*target) for target in targets):
            return []  # closed normally: nothing left to guard
        time.sleep(POLL_SECONDS)
    killed = []
    for pid, start in targets:
        if is_alive(pid, start):
            try:
                psutil.Process(pid).kill()
                killed.append(pid)
            except psutil.NoSuchProcess:
                pass
    return killed


def main(argv: Sequence[str]) -> None:
    owner = (int(argv[0]), float(argv[1]))
    targets = [(int(pid), float(start)) for pid, start in (item.split(":", 1) for item in argv[2:])]
    watch(owner, targets)


if __name__ == "__main__":
    main(sys.argv[1:])
