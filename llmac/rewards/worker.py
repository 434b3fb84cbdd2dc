"""What the verifier's worker runs: one item under a SIGALRM deadline, and the loop that serves items.

The worker is a fresh interpreter started as ``python -c`` :data:`WORKER_BOOT` (see
:class:`~llmac.rewards.verifier.Verifier`). It imports only the ``llmac.rewards`` package and
math-verify (about 0.5 s to start), so keep ``llmac/__init__.py`` and this package free of heavy
imports. SIGALRM interrupts a slow item inside the worker, which survives it; the parent's kill is the
backstop for what a signal cannot stop. The inline mode runs items here in the caller's process.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from typing import Literal

from llmac.rewards.answers import judge, load_math_verify, vote_key

# The worker is ``python -c WORKER_BOOT <fd>``, with ``fd`` its end of the socket pair to the parent.
WORKER_BOOT = f"import sys; from {__name__} import main; main(int(sys.argv[1]))"

# What a worker (or the inline mode) can run on one item.
TASKS: dict[str, Callable] = {"judge": judge, "key": vote_key}

# ("ok", result), ("timeout", detail), ("crash", detail), or ("deadline", detail) for an item its
# batch's deadline left unjudged: the result of one item.
ItemResult = tuple[Literal["ok", "timeout", "crash", "deadline"], object]


class _ItemTimeout(BaseException):
    """Raised by SIGALRM in an item: a BaseException, so math-verify's ``except Exception`` lets it pass."""


@contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise :class:`_ItemTimeout` in this (main) thread after ``seconds``; no-op for None."""
    if seconds is None:
        yield
        return
    armed = True

    def on_alarm(signum, frame):
        if armed:  # the alarm may land after the body finished but before it was cancelled
            raise _ItemTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_item(task: str, args: tuple, seconds: float | None) -> ItemResult:
    """Run one item of ``task``, interrupted by SIGALRM after ``seconds`` (main thread only; None: never)."""
    try:
        with _alarm(seconds):
            return "ok", TASKS[task](*args)
    except _ItemTimeout:
        return "timeout", "interrupted"


def main(fd: int) -> None:
    """The worker's loop: read ``("run", task, seconds, items)``, send :func:`run_item` of each item."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(level=logging.ERROR)
    load_math_verify()  # import before saying ready, so the parent's per-item clock excludes it
    conn = Connection(fd)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message[0] == "stop":
            return
        _, task, seconds, items = message
        for args in items:
            conn.send(run_item(task, args, seconds))
