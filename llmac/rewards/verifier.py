"""The verifier: judge batches of (completion, gold) pairs, each item under a hard timeout.

sympy can run for ever on some inputs (``\\boxed{9^{9^{9^{9^{9}}}}}``), and math-verify's own timeout
uses SIGALRM, which only works in a main thread. A :class:`Verifier` therefore does the sympy work in
a child interpreter that it owns (:mod:`llmac.rewards.worker`) and kills when an item overruns its
deadline; the item scores 0.0, is counted as a timeout, and a fresh child takes over. A batch has a
deadline too (:meth:`VerifierConfig.batch_seconds`), so that many slow items cannot stall a training
step for minutes: items not judged by then score 0.0 and are counted as ``past_deadline``. The child is
started with ``subprocess`` (a fresh interpreter, like multiprocessing's "spawn", so it is safe beside
torch/vLLM threads), which also works where ``multiprocessing`` refuses to start children: in
daemonic processes such as DataLoader workers. Nothing in a batch raises: every failure scores 0.0 and
is counted in :class:`RewardStats`, with rate-limited log warnings. ``VerifierConfig(mode="inline")``
skips the worker when the caller runs in a main thread and accepts a SIGALRM-only timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

import llmac
from llmac.config import option
from llmac.rewards.answers import Outcome
from llmac.rewards.worker import WORKER_BOOT, ItemResult, run_item
from llmac.validation import check_fields

logger = logging.getLogger("llmac.rewards")  # one logger for the whole package

# ---------------------------------------------------------------------------------------------------
# Statistics and rate-limited reporting
# ---------------------------------------------------------------------------------------------------


@dataclass
class RewardStats:
    """Counts of what a verifier saw; every count except ``correct``/``wrong`` is an item scored 0.0."""

    scored: int = option(0, "Items scored.")
    correct: int = option(0, "Items whose answer matched the gold.")
    wrong: int = option(0, "Items with a readable answer that did not match.")
    no_answer: int = option(0, "Completions with no final-answer marker (or an empty one).")
    unparsable_answer: int = option(0, "Completions whose final-answer span math-verify could not read.")
    unparsable_gold: int = option(0, "Gold answers math-verify could not read: a data bug.")
    errors: int = option(0, "Exceptions inside math-verify/sympy, bad input types, worker crashes.")
    timeouts: int = option(0, "Items that ran past the timeout.")
    past_deadline: int = option(
        0, "Items not judged before their batch's deadline (the one running then included)."
    )
    restarts: int = option(0, "Times the worker process was killed and restarted.")

    def count(self, outcome: Outcome) -> None:
        self.scored += 1
        name = _STAT_FIELD[outcome]
        setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_STAT_FIELD = {outcome: outcome.value for outcome in Outcome} | {
    Outcome.ERROR: "errors",
    Outcome.TIMEOUT: "timeouts",
}
_FAILED_RUN = {"timeout": Outcome.TIMEOUT, "crash": Outcome.ERROR, "deadline": Outcome.PAST_DEADLINE}
_PROBLEMS = frozenset(Outcome) - {Outcome.CORRECT, Outcome.WRONG}


class _ProblemReport:
    """At most one log line per kind of problem per ``interval`` seconds, with counts and an example."""

    def __init__(self, interval: float):
        self.interval = interval
        self._pending: dict[Outcome, int] = {}
        self._example: dict[Outcome, str] = {}
        self._last: dict[Outcome, float] = {}

    def add(self, outcome: Outcome, example: str) -> None:
        self._pending[outcome] = self._pending.get(outcome, 0) + 1
        self._example.setdefault(outcome, example)

    def flush(self, totals: RewardStats) -> None:
        now = time.monotonic()
        for outcome, n in list(self._pending.items()):
            if now - self._last.get(outcome, -math.inf) < self.interval:
                continue
            example = self._example.pop(outcome)
            del self._pending[outcome]
            self._last[outcome] = now
            total = getattr(totals, _STAT_FIELD[outcome])
            if outcome is Outcome.UNPARSABLE_GOLD:
                logger.error(
                    "rewards: %d gold answer(s) math-verify cannot read (a data bug; their completions "
                    "score 0.0; %d so far), e.g. %s",
                    n, total, example,
                )  # fmt: skip
            else:
                logger.warning(
                    "rewards: %d item(s) scored 0.0 as %s (%d so far), e.g. %s",
                    n, outcome.value, total, example,
                )  # fmt: skip


def _snippet(text: object, limit: int = 80) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


# ---------------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------------


@dataclass
class VerifierConfig:
    """How a :class:`Verifier` runs and bounds its checks."""

    timeout: float = option(
        5.0,
        "Seconds one item may take; past it the item scores 0.0 and counts as a timeout.",
        range="(0, inf)",
    )
    batch_timeout: float | None = option(
        30.0,
        "Seconds a batch (one call) may take, plus `batch_timeout_per_item` per item; items not "
        "judged by then score 0.0 and count as past_deadline. The defaults bound 512 items to 81 s "
        "(5 s timeouts alone allow 43 min; a GSM8K item takes ~3 ms). None: no batch limit.",
        range="(0, inf)",
    )
    batch_timeout_per_item: float = option(
        0.1, "Seconds each item adds to its batch's deadline.", range="[0, inf)"
    )
    mode: Literal["process", "inline"] = option(
        "process",
        "'process': sympy runs in a child process that is killed on a timeout (works in any "
        "thread or process). 'inline': in the caller's process, faster to start; the timeout then only "
        "works from the main thread (SIGALRM) and is off elsewhere.",
        choices=("process", "inline"),
    )
    soft_interrupt: bool = option(
        True,
        "Interrupt a slow item with SIGALRM where it runs, so the worker survives. The parent "
        "still kills the worker if the item has not returned `kill_grace` seconds after the timeout.",
    )
    kill_grace: float = option(
        1.0, "Seconds past `timeout` before the worker is killed (with soft_interrupt).", range="[0, inf)"
    )
    startup_timeout: float = option(120.0, "Seconds the worker may take to start.", range="(0, inf)")
    log_interval: float = option(
        60.0, "Seconds between two warnings about the same kind of problem.", range="[0, inf)"
    )

    def __post_init__(self):
        check_fields(self)

    def batch_seconds(self, num_items: int) -> float:
        """Seconds a batch of ``num_items`` may take (``inf`` without a batch limit)."""
        if self.batch_timeout is None:
            return math.inf
        return self.batch_timeout + self.batch_timeout_per_item * num_items


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    finalizer: weakref.finalize


def _stop_worker(process: subprocess.Popen, conn: Connection, owner_pid: int) -> None:
    """Stop a worker politely, then by force. In a forked copy of the owner only drop our file descriptor."""
    if os.getpid() != owner_pid:
        conn.close()
        return
    with suppress(OSError):
        conn.send(("stop",))
    conn.close()
    try:
        process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _BatchClock:
    """The deadline of one batch, and the results of the items it left unjudged."""

    def __init__(self, seconds: float, num_items: int):
        self.seconds = seconds
        self.num_items = num_items
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def pad(self, results: list[ItemResult], total: int) -> list[ItemResult]:
        """``results`` followed by a ``"deadline"`` result for every item not reached."""
        detail = f"batch deadline of {self.seconds:.3g}s for {self.num_items} items"
        return results + [("deadline", detail)] * (total - len(results))


class Verifier:
    """Scores completions against gold answers with math-verify, each item under a hard timeout.

    ``score`` and ``check`` take batches and never raise on bad data: every failure scores 0.0 and is
    counted in :attr:`stats`. Thread-safe (calls are serialised) and fork-aware (a forked copy starts
    its own worker). The worker starts on first use and stops on :meth:`close`, garbage collection or
    interpreter exit; it also exits by itself when its parent dies.
    """

    def __init__(self, config: VerifierConfig | None = None):
        self.config = config or VerifierConfig()
        self._stats = RewardStats()
        self._report = _ProblemReport(self.config.log_interval)
        self._lock = threading.Lock()
        self._owner_pid = os.getpid()
        self._worker: _Worker | None = None
        self._warned_no_timeout = False

    # -- public API ---------------------------------------------------------------------------------

    def score(self, completions: Sequence[str], answers: Sequence[str]) -> list[float]:
        """1.0 for each completion whose final answer equals its gold answer, else 0.0."""
        return [1.0 if outcome is Outcome.CORRECT else 0.0 for outcome in self.check(completions, answers)]

    def check(self, completions: Sequence[str], answers: Sequence[str]) -> list[Outcome]:
        """The :class:`Outcome` of each (completion, gold) pair."""
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        items = list(zip(completions, answers, strict=True))
        with self._locked():
            outcomes = []
            for (completion, answer), (status, value) in zip(items, self._run("judge", items), strict=True):
                outcome, detail = value if status == "ok" else (_FAILED_RUN[status], value)
                outcomes.append(outcome)
                self._stats.count(outcome)
                if outcome in _PROBLEMS:
                    shown = answer if outcome is Outcome.UNPARSABLE_GOLD else completion
                    self._report.add(outcome, _snippet(shown) + (f" ({detail})" if detail else ""))
            self._report.flush(self._stats)
        return outcomes

    def answer_keys(self, completions: Sequence[str]) -> list[str | None]:
        """:func:`~llmac.rewards.answers.vote_key` of each completion, under the timeout (None past it)."""
        with self._locked():
            results = self._run("key", [(c,) for c in completions])
        return [value if status == "ok" else None for status, value in results]

    @property
    def stats(self) -> RewardStats:
        """A copy of the counts so far."""
        with self._locked():
            return dataclasses.replace(self._stats)

    def reset_stats(self) -> RewardStats:
        """The counts so far, then zero them (for per-step logging)."""
        with self._locked():
            stats, self._stats = self._stats, RewardStats()
            return stats

    @property
    def worker_pid(self) -> int | None:
        """Process id of the current worker (None before first use, in inline mode, or after close)."""
        return self._worker.process.pid if self._worker is not None else None

    def close(self) -> None:
        """Stop the worker (a later call starts a new one)."""
        with self._locked():
            self._drop_worker(kill=False)

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running items ------------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._forget_parent_worker()
        with self._lock:
            yield

    def _run(self, task: str, items: list[tuple]) -> list[ItemResult]:
        """The result of each item, in order."""
        if not items:
            return []
        if self.config.mode == "inline":
            return self._run_inline(task, items)
        return self._run_in_worker(task, items)

    def _run_inline(self, task: str, items: list[tuple]) -> list[ItemResult]:
        timed = threading.current_thread() is threading.main_thread()
        if not timed and not self._warned_no_timeout:
            logger.warning("rewards: inline Verifier used outside the main thread: items run without timeout")
            self._warned_no_timeout = True
        batch = _BatchClock(self.config.batch_seconds(len(items)), len(items))
        results: list[ItemResult] = []
        for args in items:
            left = batch.left()
            if left <= 0:
                break
            # In the main thread SIGALRM ends the item at its timeout or the batch deadline, the earlier;
            # elsewhere nothing can stop it, and the deadline is only checked between items.
            seconds = min(self.config.timeout, left) if timed else None
            status, value = run_item(task, args, seconds)
            if status == "timeout" and seconds < self.config.timeout:
                break  # stopped by the batch deadline: this item is past it too
            results.append((status, value))
        return batch.pad(results, len(items))

    def _run_in_worker(self, task: str, items: list[tuple]) -> list[ItemResult]:
        cfg = self.config
        soft = cfg.timeout if cfg.soft_interrupt else None
        item_seconds = cfg.timeout + cfg.kill_grace if cfg.soft_interrupt else cfg.timeout
        self._ensure_worker()  # starting the worker is not the batch's time
        batch = _BatchClock(cfg.batch_seconds(len(items)), len(items))
        results: list[ItemResult] = []
        while len(results) < len(items):
            worker = self._ensure_worker()
            request = ("run", task, soft, items[len(results) :])
            try:
                worker.conn.send(request)
            except OSError:  # the worker died while idle (killed from outside): start another once
                self._restart()
                worker = self._ensure_worker()
                worker.conn.send(request)
            # Results come back in order, so the item in progress is always the next one expected.
            while len(results) < len(items):
                left = batch.left()
                if not worker.conn.poll(max(min(item_seconds, left), 0.0)):
                    if left <= item_seconds:  # the batch's deadline came first: drop this and the rest
                        self._restart()
                        return batch.pad(results, len(items))
                    results.append(("timeout", f"killed after {item_seconds:g}s"))
                    self._restart()
                    break
                try:
                    results.append(worker.conn.recv())
                except (EOFError, OSError):
                    results.append(("crash", f"worker died (exit code {worker.process.poll()})"))
                    self._restart()
                    break
        return results

    def _restart(self) -> None:
        self._drop_worker(kill=True)
        self._stats.restarts += 1

    def _ensure_worker(self) -> _Worker:
        if self._worker is not None:
            if self._worker.process.poll() is None:
                return self._worker
            self._restart()  # it died while idle (killed from outside, out of memory)
        self._worker = self._start_worker()
        return self._worker

    def _start_worker(self) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        # The child must import this very llmac, even when it is not installed (a source checkout).
        package_root = str(Path(llmac.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", WORKER_BOOT, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            child_sock.close()
        conn = Connection(parent_sock.detach())
        finalizer = weakref.finalize(self, _stop_worker, process, conn, os.getpid())
        worker = _Worker(process, conn, finalizer)
        ready = False
        with suppress(EOFError, OSError):
            ready = conn.poll(self.config.startup_timeout) and conn.recv()[0] == "ready"
        if not ready:
            process.kill()
            finalizer()
            raise RuntimeError(
                f"rewards: the verifier worker did not start within {self.config.startup_timeout:g}s "
                f"(exit code {process.poll()}); see its error output above"
            )
        return worker

    def _drop_worker(self, kill: bool) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if kill and worker.process.poll() is None:
            worker.process.kill()
        worker.finalizer()

    def _forget_parent_worker(self) -> None:
        """After a fork the worker (and maybe a held lock) belong to the parent: start afresh."""
        if os.getpid() == self._owner_pid:
            return
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()
        if self._worker is not None:
            self._worker.finalizer()  # in a forked copy this only closes our descriptor
            self._worker = None
