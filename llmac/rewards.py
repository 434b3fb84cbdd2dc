"""Rewards: check a completion's final answer against a gold answer with math-verify, under a hard timeout.

Reading an answer takes two steps. :func:`extract_final_answer` finds the span that holds the final
answer by plain string search; the last marker in the text wins: ``\\boxed{...}``, ``#### N``,
``... answer is N``, a line starting ``A: N`` (GSM8K model solutions) or ``Answer: N`` /
``Final Answer: N`` (the arithmetic task). A completion without any marker has no answer: a bare
number somewhere in the text does not count, so a policy cannot earn reward by scattering numbers.
math-verify then turns the span and the gold into sympy objects and compares them.

sympy can run for ever on some inputs (``\\boxed{9^{9^{9^{9^{9}}}}}``), and math-verify's own timeout
uses SIGALRM, which only works in a main thread. A :class:`Verifier` therefore does the sympy work in
a child interpreter that it owns and kills when an item overruns its deadline; the item scores 0.0,
is counted as a timeout, and a fresh child takes over. The child is started with ``subprocess`` (a
fresh interpreter, like multiprocessing's "spawn", so it is safe beside torch/vLLM threads), which
also works where ``multiprocessing`` refuses to start children: in daemonic processes such as
DataLoader workers. Nothing in a batch raises: every failure scores 0.0 and is counted in
:class:`RewardStats`, with rate-limited log warnings.

The worker is ``python -c "from llmac.rewards import ..."``: it imports only this module and
math-verify (about 0.5 s to start), so keep ``llmac/__init__.py`` free of heavy imports. A slow item
is first interrupted inside the worker with SIGALRM (the worker survives); the kill is the backstop
for what a signal cannot stop. ``VerifierConfig(mode="inline")`` skips the worker when the caller
runs in a main thread and accepts a SIGALRM-only timeout.

Reward functions are batch functions ``(completions: list[str], answers: list[str]) -> list[float]``,
looked up by :func:`get_reward_fn` from a registered name (``"math"``) or a ``"module:function"`` path.
:func:`answer_key` gives the vote key of a completion for majority voting.
"""

from __future__ import annotations

import enum
import importlib
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

RewardFn = Callable[[list[str], list[str]], list[float]]

# ---------------------------------------------------------------------------------------------------
# Locating the final answer (string search only; math-verify does the reading)
# ---------------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"\banswer\s+is\b\s*:?", re.IGNORECASE)
_ANSWER_LINE = re.compile(
    r"^[ \t>*#_]*(?:final[ \t]+)?answer[ \t]*(?:\*\*)?[ \t]*:", re.IGNORECASE | re.MULTILINE
)
_A_LINE = re.compile(r"^[ \t>*_]*A[ \t]*:", re.MULTILINE)
_HASHES = "####"
_SENTENCE_END = re.compile(r"\.(?:\s|$)")


@dataclass(frozen=True)
class FinalAnswer:
    """The span of a text that holds its final answer."""

    text: str = field(metadata={"help": "The answer as written (for \\boxed: the content of the braces)."})
    latex: bool = field(metadata={"help": "True when the span is LaTeX as a whole (\\boxed content)."})


def extract_final_answer(text: str) -> FinalAnswer | None:
    """The final-answer span of ``text`` (after its last answer marker), or None when it has none.

    A line marker's span runs to the end of its line (to the next non-empty line if the marker ends
    its line) and stops at the first sentence end, so "The answer is 18. Then ..." gives "18".
    """
    candidates: list[tuple[int, FinalAnswer | None]] = []
    if (boxed := _last_match(_BOXED, text)) is not None:
        content = _balanced_content(text, boxed.end())
        # An unclosed \boxed{ (a truncated completion) is no answer; an earlier marker may still be one.
        if content is not None:
            candidates.append((boxed.start(), FinalAnswer(content.strip(), latex=True)))
    if (pos := text.rfind(_HASHES)) != -1:
        candidates.append((pos, _line_span(text, pos + len(_HASHES))))
    for pattern in (_ANSWER_IS, _ANSWER_LINE, _A_LINE):
        if (match := _last_match(pattern, text)) is not None:
            candidates.append((match.start(), _line_span(text, match.end())))
    if not candidates:
        return None
    answer = max(candidates, key=lambda c: c[0])[1]
    return answer if answer is not None and answer.text else None


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    matches = list(pattern.finditer(text))
    return matches[-1] if matches else None


def _balanced_content(text: str, start: int) -> str | None:
    """The text from ``start`` up to the brace that closes the one just before it; None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        char = text[i]
        if char == "{" and text[i - 1] != "\\":
            depth += 1
        elif char == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _line_span(text: str, start: int) -> FinalAnswer:
    rest = text[start:].lstrip()
    line = rest.split("\n", 1)[0]
    if (end := _SENTENCE_END.search(line)) is not None:
        line = line[: end.start() + 1]
    return FinalAnswer(line.strip().strip("*").strip(), latex=False)  # "**Answer:** 42**" markdown


# ---------------------------------------------------------------------------------------------------
# Judging one item with math-verify (runs in the worker, or inline)
# ---------------------------------------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """What became of one (completion, gold) pair. Only CORRECT scores 1.0."""

    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"
    UNPARSABLE_ANSWER = "unparsable_answer"
    UNPARSABLE_GOLD = "unparsable_gold"
    ERROR = "error"
    TIMEOUT = "timeout"


def _math_verify():
    """math-verify, imported on first use so that importing llmac.rewards stays cheap."""
    import math_verify

    _quiet_math_verify()
    return math_verify


def _drop_disabled_timeout_notice(record: logging.LogRecord) -> bool:
    """Log filter: math-verify warns once that its timeout is off; llmac enforces the timeout itself."""
    return not str(record.msg).startswith("Timeout is disabled")


def _quiet_math_verify() -> None:
    for name in ("math_verify.parser", "math_verify.grader"):
        log = logging.getLogger(name)
        if _drop_disabled_timeout_notice not in log.filters:
            log.addFilter(_drop_disabled_timeout_notice)


def _parse(text: str, latex: bool) -> list:
    """math-verify's reading of an answer span: a list whose first items are sympy objects, if any.

    A LaTeX span is wrapped in ``\\boxed{}`` so that math-verify reads it whole ("x^2+1" must not
    become the plain number 3); a text span may mix prose, numbers and inline LaTeX.
    """
    mv = _math_verify()
    if latex and not any(delim in text for delim in ("$", "\\(", "\\[")):
        return mv.parse(
            "\\boxed{" + text + "}", [mv.LatexExtractionConfig()], parsing_timeout=None, raise_on_error=True
        )
    config = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    return mv.parse(text, config, parsing_timeout=None, raise_on_error=True)


def _has_math(parsed: list) -> bool:
    from sympy import Basic, MatrixBase

    return any(isinstance(item, Basic | MatrixBase) for item in parsed)


@lru_cache(maxsize=4096)
def _parse_gold(answer: str) -> tuple | None:
    """The parsed gold, or None if math-verify reads no mathematical object from it.

    A gold may be a bare answer ("72", "1,000", "-4", "\\frac{1}{2}"), read as LaTeX as a whole, or
    a text with a marker ("... #### 72", "\\boxed{...}"), read like a completion. Golds repeat across
    samples of one prompt, hence the cache.
    """
    span = extract_final_answer(answer) or FinalAnswer(answer.strip(), latex=True)
    if not span.text:
        return None
    parsed = _parse(span.text, span.latex)
    return tuple(parsed) if _has_math(parsed) else None


def judge(completion: str, answer: str) -> tuple[Outcome, str]:
    """Judge one pair without any timeout; returns the outcome and a short detail (for logs).

    Never raises an ``Exception``: math-verify's errors become ``Outcome.ERROR``.
    """
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(completion, str) or not isinstance(answer, str):
        return Outcome.ERROR, f"expected strings, got {type(completion).__name__} and {type(answer).__name__}"
    try:
        gold = _parse_gold(answer)
        if gold is None:
            return Outcome.UNPARSABLE_GOLD, ""
        span = extract_final_answer(completion)
        if span is None:
            return Outcome.NO_ANSWER, ""
        parsed = _parse(span.text, span.latex)
        if not parsed:
            return Outcome.UNPARSABLE_ANSWER, span.text[:100]
        ok = _math_verify().verify(list(gold), parsed, timeout_seconds=None, raise_on_error=True)
        return (Outcome.CORRECT if ok else Outcome.WRONG), ""
    except Exception as exc:  # any failure of the checker scores 0.0, never the job
        # Only the type: str() of a sympy error can itself be huge or slow.
        return Outcome.ERROR, type(exc).__name__


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


def _key(completion: str) -> str | None:
    """See :func:`answer_key` (this one runs without a timeout)."""
    if not isinstance(completion, str) or (span := extract_final_answer(completion)) is None:
        return None
    try:
        parsed = _parse(span.text, span.latex)
    except Exception:  # a key is best effort: fall back to the span's text
        return span.text
    from sympy import Integer, Number

    for item in parsed:
        if isinstance(item, Integer):
            return str(item)
        if isinstance(item, Number):  # a Float or Rational: 0.5, 1/2 and 0.50 vote together
            value = float(item)
            return str(int(value)) if value.is_integer() else format(value, ".10g")
    return str(parsed[-1]) if parsed else span.text


# What a worker (or the inline mode) can run on one item.
_TASKS: dict[str, Callable] = {"judge": judge, "key": _key}


def _run_item(task: str, args: tuple, seconds: float | None) -> tuple[bool, object]:
    """``(True, result)`` of one task item, or ``(False, None)`` if SIGALRM interrupted it."""
    try:
        with _alarm(seconds):
            return True, _TASKS[task](*args)
    except _ItemTimeout:
        return False, None


def _worker_main(fd: int) -> None:
    """The worker's loop: read ``("run", task, seconds, items)``, answer each item with :func:`_run_item`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(level=logging.ERROR)
    _math_verify()  # import before saying ready, so the parent's per-item clock excludes it
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
            conn.send(_run_item(task, args, seconds))


# ---------------------------------------------------------------------------------------------------
# Statistics and rate-limited reporting
# ---------------------------------------------------------------------------------------------------


@dataclass
class RewardStats:
    """Counts of what a verifier saw; every count except ``correct``/``wrong`` is an item scored 0.0."""

    scored: int = field(default=0, metadata={"help": "Items scored."})
    correct: int = field(default=0, metadata={"help": "Items whose answer matched the gold."})
    wrong: int = field(default=0, metadata={"help": "Items with a readable answer that did not match."})
    no_answer: int = field(
        default=0, metadata={"help": "Completions with no final-answer marker (or an empty one)."}
    )
    unparsable_answer: int = field(
        default=0, metadata={"help": "Completions whose final-answer span math-verify could not read."}
    )
    unparsable_gold: int = field(
        default=0, metadata={"help": "Gold answers math-verify could not read: a data bug."}
    )
    errors: int = field(
        default=0, metadata={"help": "Exceptions inside math-verify/sympy, bad input types, worker crashes."}
    )
    timeouts: int = field(default=0, metadata={"help": "Items that ran past the timeout."})
    restarts: int = field(default=0, metadata={"help": "Times the worker process was killed and restarted."})

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
_FAILED_RUN = {"timeout": Outcome.TIMEOUT, "crash": Outcome.ERROR}
_PROBLEMS = (
    Outcome.NO_ANSWER,
    Outcome.UNPARSABLE_ANSWER,
    Outcome.UNPARSABLE_GOLD,
    Outcome.ERROR,
    Outcome.TIMEOUT,
)


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
                    n,
                    outcome.value,
                    total,
                    example,
                )


def _snippet(text: object, limit: int = 80) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


# ---------------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------------


@dataclass
class VerifierConfig:
    """How a :class:`Verifier` runs and bounds its checks."""

    timeout: float = field(
        default=5.0,
        metadata={"help": "Seconds one item may take; past it the item scores 0.0 and counts as a timeout."},
    )
    mode: Literal["process", "inline"] = field(
        default="process",
        metadata={
            "help": "'process': sympy runs in a child process that is killed on a timeout (works in any "
            "thread or process). 'inline': in the caller's process, faster to start; the timeout then only "
            "works from the main thread (SIGALRM) and is off elsewhere."
        },
    )
    soft_interrupt: bool = field(
        default=True,
        metadata={
            "help": "Interrupt a slow item with SIGALRM where it runs, so the worker survives. The parent "
            "still kills the worker if the item has not returned `kill_grace` seconds after the timeout."
        },
    )
    kill_grace: float = field(
        default=1.0,
        metadata={"help": "Seconds past `timeout` before the worker is killed (with soft_interrupt)."},
    )
    startup_timeout: float = field(default=120.0, metadata={"help": "Seconds the worker may take to start."})
    log_interval: float = field(
        default=60.0, metadata={"help": "Seconds between two warnings about the same kind of problem."}
    )

    def __post_init__(self):
        if not self.timeout > 0:
            raise ValueError(f"VerifierConfig.timeout must be > 0 seconds, got {self.timeout}")
        if self.mode not in ("process", "inline"):
            raise ValueError(f"VerifierConfig.mode must be 'process' or 'inline', got {self.mode!r}")
        if self.kill_grace < 0:
            raise ValueError(f"VerifierConfig.kill_grace must be >= 0, got {self.kill_grace}")


_WORKER_BOOT = "import sys; from llmac.rewards import _worker_main; _worker_main(int(sys.argv[1]))"


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    finalizer: weakref.finalize


def _stop_worker(process: subprocess.Popen, conn: Connection, owner_pid: int) -> None:
    """Stop a worker politely, then by force. In a forked copy of the owner only drop our file descriptor."""
    if os.getpid() == owner_pid:
        with suppress(OSError):
            conn.send(("stop",))
    conn.close()
    if os.getpid() != owner_pid:
        return
    try:
        process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
        """:func:`answer_key` of each completion, under the same timeout (None when it runs out)."""
        with self._locked():
            results = self._run("key", [(c,) for c in completions])
        return [value if status == "ok" else None for status, value in results]

    @property
    def stats(self) -> RewardStats:
        """A copy of the counts so far."""
        with self._lock:
            return RewardStats(**self._stats.as_dict())

    def reset_stats(self) -> RewardStats:
        """The counts so far, then zero them (for per-step logging)."""
        with self._lock:
            stats, self._stats = self._stats, RewardStats()
            return stats

    @property
    def worker_pid(self) -> int | None:
        """Process id of the current worker (None before first use, in inline mode, or after close)."""
        return self._worker.process.pid if self._worker is not None else None

    def close(self) -> None:
        """Stop the worker (a later call starts a new one)."""
        with self._lock:
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

    def _run(self, task: str, items: list[tuple]) -> list[tuple[str, object]]:
        """``("ok", result)``, ``("timeout", detail)`` or ``("crash", detail)`` per item, in order."""
        if self.config.mode == "inline":
            return self._run_inline(task, items)
        return self._run_in_worker(task, items)

    def _run_inline(self, task: str, items: list[tuple]) -> list[tuple[str, object]]:
        seconds: float | None = self.config.timeout
        if threading.current_thread() is not threading.main_thread():
            seconds = None
            if not self._warned_no_timeout:
                logger.warning(
                    "rewards: inline Verifier used outside the main thread: items run without timeout"
                )
                self._warned_no_timeout = True
        results = []
        for args in items:
            finished, value = _run_item(task, args, seconds)
            results.append(("ok", value) if finished else ("timeout", "interrupted"))
        return results

    def _run_in_worker(self, task: str, items: list[tuple]) -> list[tuple[str, object]]:
        cfg = self.config
        soft = cfg.timeout if cfg.soft_interrupt else None
        deadline = cfg.timeout + cfg.kill_grace if cfg.soft_interrupt else cfg.timeout
        results: list[tuple[str, object]] = []
        while len(results) < len(items):
            worker = self._ensure_worker()
            try:
                worker.conn.send(("run", task, soft, items[len(results) :]))
            except OSError:  # the worker died while idle (killed from outside): start another once
                self._restart()
                worker = self._ensure_worker()
                worker.conn.send(("run", task, soft, items[len(results) :]))
            # Results come back in order, so the item in progress is always the next one expected.
            while len(results) < len(items):
                if not worker.conn.poll(deadline):
                    results.append(("timeout", f"killed after {deadline:g}s"))
                    self._restart()
                    break
                try:
                    finished, value = worker.conn.recv()
                except (EOFError, OSError):
                    results.append(("crash", f"worker died (exit code {worker.process.poll()})"))
                    self._restart()
                    break
                results.append(("ok", value) if finished else ("timeout", "interrupted"))
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
        import socket

        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        # The child must import this very llmac, even when it is not installed (a source checkout).
        package_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_BOOT, str(child_sock.fileno())],
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


# ---------------------------------------------------------------------------------------------------
# Default verifier and the math reward
# ---------------------------------------------------------------------------------------------------

_default_verifier: Verifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> Verifier:
    """The module's shared :class:`Verifier` (process mode, default config), created on first use."""
    global _default_verifier
    with _default_lock:
        if _default_verifier is None:
            _default_verifier = Verifier()
        return _default_verifier


def set_default_verifier(verifier: Verifier) -> Verifier | None:
    """Make ``verifier`` the one behind :func:`math_reward` and :func:`math_rewards`; returns the old one."""
    global _default_verifier
    with _default_lock:
        previous, _default_verifier = _default_verifier, verifier
        return previous


def math_reward(completion: str, answer: str) -> float:
    """1.0 if the final answer of ``completion`` equals ``answer`` (math-verify), else 0.0."""
    return default_verifier().score([completion], [answer])[0]


def answer_key(completion: str) -> str | None:
    """A vote key for majority voting: the final answer in a canonical form, None if there is none.

    "18", "$18", "18.00" and "\\boxed{18}" share a key, as do "0.5" and "\\frac{1}{2}"; other
    expressions key by math-verify's reading of them. Runs in the default verifier's worker, since
    parsing alone can hang on nested LaTeX.
    """
    return default_verifier().answer_keys([completion])[0]


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make a batch reward function available to :func:`get_reward_fn` under ``name``."""
    if not name or ":" in name:
        raise ValueError(f"reward name must be non-empty and without ':', got {name!r}")

    def decorate(fn: RewardFn) -> RewardFn:
        known = _REGISTRY.get(name)
        # Registering the same function again (a module reloaded, a notebook cell re-run) replaces it.
        if known is not None and _qualified(known) != _qualified(fn):
            raise ValueError(f"reward {name!r} is already registered to {_qualified(known)}")
        _REGISTRY[name] = fn
        return fn

    return decorate


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def registered_rewards() -> list[str]:
    """Names known to :func:`get_reward_fn`."""
    return sorted(_REGISTRY)


def get_reward_fn(name_or_path: str) -> RewardFn:
    """A batch reward ``(completions, answers) -> list[float]`` by registered name or ``"module:func"``."""
    if ":" not in name_or_path:
        if name_or_path in _REGISTRY:
            return _REGISTRY[name_or_path]
        raise ValueError(
            f"unknown reward {name_or_path!r}: registered rewards are {registered_rewards()}; "
            "or give an import path 'package.module:function'"
        )
    module_name, _, attr = name_or_path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"bad reward import path {name_or_path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"bad reward import path {name_or_path!r}: cannot import module {module_name!r} ({exc})"
        ) from exc
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(
                f"bad reward import path {name_or_path!r}: module {module_name!r} has no {attr!r}"
            )
    if not callable(fn):
        raise ValueError(f"bad reward import path {name_or_path!r}: {attr!r} is not callable")
    return fn


@register_reward("math")
def math_rewards(completions: list[str], answers: list[str]) -> list[float]:
    """Batch math reward through the default :class:`Verifier`: 1.0 per correct final answer, else 0.0."""
    return default_verifier().score(completions, answers)
