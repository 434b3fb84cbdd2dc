"""Rewards: answer formats, GSM8K agreement, timeouts that survive threads and processes, the registry."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from llmac.rewards import (
    Outcome,
    Verifier,
    VerifierConfig,
    extract_final_answer,
    get_reward_fn,
    math_reward,
    math_rewards,
    register_reward,
    registered_rewards,
)

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
# sympy never finishes these without a timeout (measured: still running after 30 s).
POWER_TOWER = "so the result is \\boxed{9^{9^{9^{9^{9}}}}}"
HUGE_FACTORIAL = "A: $100000000!$"
TIMEOUT = 1.0
SLACK = 1.5  # pipe round trip, killing and reaping the worker, a loaded 2-core machine


@pytest.fixture(scope="module")
def verifier():
    with Verifier() as v:
        yield v


@pytest.fixture
def fast_verifier():
    """A fresh verifier with a short timeout; its stats start at zero."""
    with Verifier(VerifierConfig(timeout=TIMEOUT)) as v:
        yield v


def _gsm8k_items(gsm8k_dir: Path) -> tuple[list[str], list[str], list[bool]]:
    gold = {}
    with open(gsm8k_dir / "test.jsonl") as f:
        for line in f:
            row = json.loads(line)
            gold[row["question"]] = row["answer"].split("####")[-1].strip()
    completions, answers, labels = [], [], []
    with open(gsm8k_dir / "model_solutions.jsonl") as f:
        for line in f:
            row = json.loads(line)
            for source in SOURCES:
                completions.append(row[source]["solution"])
                answers.append(gold[row["question"]])
                labels.append(row[source]["is_correct"])
    return completions, answers, labels


def test_gsm8k_model_solutions_agree_with_their_labels(gsm8k_dir, verifier):
    completions, answers, labels = _gsm8k_items(gsm8k_dir)
    assert len(completions) == 2640 and sum(labels) > 0
    verifier.reset_stats()
    started = time.perf_counter()
    scores = verifier.score(completions, answers)
    elapsed = time.perf_counter() - started
    disagreements = [
        (i, label, completions[i][-120:], answers[i])
        for i, (score, label) in enumerate(zip(scores, labels, strict=True))
        if (score == 1.0) != label
    ]
    agreement = 1 - len(disagreements) / len(labels)
    print(f"GSM8K model solutions: agreement {agreement:.4%} on {len(labels)}, scored in {elapsed:.2f}s")
    for disagreement in disagreements[:20]:
        print("disagreement:", disagreement)
    assert agreement >= 0.99
    stats = verifier.stats
    assert stats.scored == 2640 and stats.timeouts == 0 and stats.errors == 0 and stats.unparsable_gold == 0
    assert stats.correct == sum(scores) and stats.correct + stats.wrong + stats.no_answer == 2640
    assert elapsed < 60, f"scoring 2,640 GSM8K solutions took {elapsed:.1f}s"


def test_gsm8k_reference_solutions_all_score_one(gsm8k_dir, verifier):
    """The reference solutions ("... A: 18") must match the gold of test.jsonl ("#### 18") for every question."""
    gold = {}
    with open(gsm8k_dir / "test.jsonl") as f:
        for line in f:
            row = json.loads(line)
            gold[row["question"]] = row["answer"]  # the full text: the gold is read after its "####"
    with open(gsm8k_dir / "model_solutions.jsonl") as f:
        rows = [json.loads(line) for line in f]
    scores = verifier.score([r["ground_truth"] for r in rows], [gold[r["question"]] for r in rows])
    assert len(scores) == 660 and sum(scores) == 660


FORMATS = [
    # \boxed, with nested braces, inside $...$; the last \boxed wins
    ("so the total is \\boxed{72}.", "72", 1.0),
    ("so the total is \\boxed{72}.", "73", 0.0),
    ("$\\boxed{\\frac{1}{2}}$", "0.5", 1.0),
    ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{3}", 0.0),
    ("first \\boxed{3}, then corrected: \\boxed{4}", "4", 1.0),
    ("first \\boxed{3}, then corrected: \\boxed{4}", "3", 0.0),
    ("\\boxed{x^2+1}", "x^2 + 1", 1.0),
    ("\\boxed{x^2+1}", "3", 0.0),  # read as LaTeX, not as the expression 2+1
    # GSM8K reference format
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18", 1.0),
    ("#### 1,000", "1000", 1.0),
    ("#### 1,000", "100", 0.0),
    # "The answer is N"
    ("The answer is 18.", "18", 1.0),
    ("The answer is 18.", "19", 0.0),
    ("Therefore, the final answer is $\\frac{3}{4}$.", "0.75", 1.0),
    ("So the answer is 18. Check: 9 * 2 = 20", "18", 1.0),  # the span stops at the sentence end
    # "A: N" (GSM8K model solutions)
    ("She makes 9 * 2 = $<<9*2=18>>18 every day\nA: 18", "18", 1.0),
    ("A: 18", "19", 0.0),
    ("A: $1,234.50", "1234.5", 1.0),
    # "Answer: N" (the arithmetic task) and markdown variants
    ("38 - 57 = -19\n-19 + 15 = -4\nAnswer: -4", "-4", 1.0),
    ("38 - 57 = -19\n-19 + 15 = -4\nAnswer: -4", "4", 0.0),
    ("**Answer:** 42", "42", 1.0),
    ("Final Answer: 42", "24", 0.0),
    # the last marker wins, whatever its kind
    ("The answer is 5.\nWait, 2 + 4 = 6.\nAnswer: 6", "6", 1.0),
    ("The answer is 5.\nWait, 2 + 4 = 6.\nAnswer: 6", "5", 0.0),
    # gold forms
    ("A: 1000", "1,000", 1.0),
    ("A: 0.5", "\\frac{1}{2}", 1.0),
    ("A: 18", "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", 1.0),  # a whole GSM8K answer field
    ("A: 18", 18, 1.0),  # a numeric gold from a dataset column
]


@pytest.mark.parametrize(("completion", "gold", "expected"), FORMATS)
def test_answer_formats(verifier, completion, gold, expected):
    assert verifier.score([completion], [gold]) == [expected]


def test_extract_final_answer_spans():
    assert extract_final_answer("x\n\\boxed{\\frac{1}{2}} done").text == "\\frac{1}{2}"
    assert extract_final_answer("x\n\\boxed{\\frac{1}{2}} done").latex
    assert extract_final_answer("1 + 1 = 2\nAnswer: 2").text == "2"
    assert extract_final_answer("The answer is:\n\n 7 apples") is not None
    assert extract_final_answer("The answer is:\n\n 7 apples").text == "7 apples"
    assert extract_final_answer("no marker, just 18") is None
    assert extract_final_answer("truncated \\boxed{12") is None
    assert extract_final_answer("A: 3\n\\boxed{12").text == "3"  # an unclosed box does not hide an answer


def test_repeated_answer_spans_are_judged_once_per_gold():
    from llmac.rewards.answers import _judge_span, judge

    _judge_span.cache_clear()
    first = [judge(f"{a} + 1 = {a + 1}\nAnswer: {a + 1}", "8") for a in (7, 7, 3)]
    again = [judge("other steps\nAnswer: 8", "8"), judge("more steps\nAnswer: 4", "8.0")]
    assert [o for o, _ in first] == [Outcome.CORRECT, Outcome.CORRECT, Outcome.WRONG]
    assert [o for o, _ in again] == [Outcome.CORRECT, Outcome.WRONG]
    # "Answer: 8" against gold 8 was judged once; "8.0" is a new gold, so "4" is judged again.
    assert _judge_span.cache_info().hits == 2 and _judge_span.cache_info().misses == 3


def test_failures_score_zero_and_are_counted(fast_verifier):
    cases = [
        ("", "5", Outcome.NO_ANSWER),
        ("I think it is 18", "18", Outcome.NO_ANSWER),  # a bare number is not an answer
        ("The answer is", "5", Outcome.NO_ANSWER),
        ("so \\boxed{12", "12", Outcome.NO_ANSWER),
        ("A: banana", "5", Outcome.UNPARSABLE_ANSWER),
        ("A: 5", "", Outcome.UNPARSABLE_GOLD),
        ("A: 5", "???", Outcome.UNPARSABLE_GOLD),
        ("A: 5", "\\frac{1}{0}", Outcome.ERROR),  # math-verify raises "Can't evaluate nan or zoo"
        (None, "5", Outcome.ERROR),
        ("A: 5", "5", Outcome.CORRECT),
        ("A: 6", "5", Outcome.WRONG),
    ]
    outcomes = fast_verifier.check([c for c, _, _ in cases], [g for _, g, _ in cases])
    assert outcomes == [expected for _, _, expected in cases]
    assert fast_verifier.score([c for c, _, _ in cases], [g for _, g, _ in cases]) == [0.0] * 9 + [1.0, 0.0]
    stats = fast_verifier.stats.as_dict()
    assert stats == {
        "scored": 22, "correct": 2, "wrong": 2, "no_answer": 8, "unparsable_answer": 2, "unparsable_gold": 4,
        "errors": 4, "timeouts": 0, "past_deadline": 0, "restarts": 0,
    }  # fmt: skip
    assert fast_verifier.reset_stats().scored == 22 and fast_verifier.stats.scored == 0


def test_warnings_are_rate_limited_and_bad_gold_is_reported(caplog):
    with (
        Verifier(VerifierConfig(mode="inline")) as v,
        caplog.at_level(logging.WARNING, logger="llmac.rewards"),
    ):
        v.score(["no answer here"] * 30 + ["A: 1"], ["1"] * 30 + ["not a number {"])
        v.score(["still nothing"] * 30, ["1"] * 30)
    no_answer = [r for r in caplog.records if "no_answer" in r.getMessage()]
    assert len(no_answer) == 1 and "30 item(s)" in no_answer[0].getMessage()
    gold = [r for r in caplog.records if "gold" in r.getMessage()]
    assert len(gold) == 1 and gold[0].levelno == logging.ERROR and "not a number {" in gold[0].getMessage()
    assert v.stats.no_answer == 60 and v.stats.unparsable_gold == 1


def test_length_mismatch_is_a_caller_error(verifier):
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        verifier.score(["A: 1", "A: 2"], ["1"])


@pytest.mark.parametrize("hang", [POWER_TOWER, HUGE_FACTORIAL])
def test_hang_times_out_and_the_verifier_still_works(fast_verifier, hang):
    assert fast_verifier.score(["A: 1"], ["1"]) == [1.0]  # the worker is up: time only the item
    started = time.perf_counter()
    assert fast_verifier.check([hang], ["5"]) == [Outcome.TIMEOUT]
    elapsed = time.perf_counter() - started
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + SLACK
    assert fast_verifier.stats.timeouts == 1
    assert fast_verifier.score(["A: 5", "\\boxed{7}"], ["5", "7"]) == [1.0, 1.0]


def test_uninterrupted_hang_kills_and_restarts_the_worker():
    """Without the in-worker SIGALRM only the kill stops the item: the hard deadline path."""
    with Verifier(VerifierConfig(timeout=TIMEOUT, soft_interrupt=False)) as v:
        v.score(["A: 1"], ["1"])
        first_pid = v.worker_pid
        started = time.perf_counter()
        outcomes = v.check(["A: 1", POWER_TOWER, "A: 3"], ["1", "5", "3"])
        elapsed = time.perf_counter() - started
        assert outcomes == [Outcome.CORRECT, Outcome.TIMEOUT, Outcome.CORRECT]
        assert v.worker_pid not in (None, first_pid)
        assert v.stats.restarts == 1 and v.stats.timeouts == 1
        assert elapsed < TIMEOUT + 2 * SLACK + 5  # includes starting the new worker
        assert not _alive(first_pid)


def test_timeout_works_from_a_non_main_thread(fast_verifier):
    fast_verifier.score(["A: 1"], ["1"])
    result = {}

    def run():
        started = time.perf_counter()
        result["outcomes"] = fast_verifier.check(["A: 2", POWER_TOWER], ["2", "5"])
        result["elapsed"] = time.perf_counter() - started

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert result["outcomes"] == [Outcome.CORRECT, Outcome.TIMEOUT]
    assert result["elapsed"] < TIMEOUT + SLACK


def test_concurrent_callers_share_one_verifier(verifier):
    results: dict[int, list[float]] = {}

    def run(k: int) -> None:
        results[k] = verifier.score(
            [f"A: {k * 100 + i}" for i in range(50)], [str(k * 100 + i) for i in range(50)]
        )

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {k: [1.0] * 50 for k in range(4)}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match=r"VerifierConfig.timeout = 0: must be > 0"):
        VerifierConfig(timeout=0)
    with pytest.raises(ValueError, match="VerifierConfig.mode = 'thread': must be one of"):
        VerifierConfig(mode="thread")


def test_inline_mode_times_out_in_the_main_thread_and_restores_sigalrm():
    previous = signal.getsignal(signal.SIGALRM)
    with Verifier(VerifierConfig(mode="inline", timeout=TIMEOUT)) as v:
        started = time.perf_counter()
        assert v.check([POWER_TOWER, "A: 3"], ["5", "3"]) == [Outcome.TIMEOUT, Outcome.CORRECT]
        assert time.perf_counter() - started < TIMEOUT + SLACK
        assert v.worker_pid is None
    assert signal.getsignal(signal.SIGALRM) is previous
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_worker_killed_mid_item_scores_error_and_the_rest_still_scores():
    with Verifier(VerifierConfig(timeout=30.0, soft_interrupt=False)) as v:
        v.score(["A: 1"], ["1"])
        pid = v.worker_pid
        result = {}
        thread = threading.Thread(target=lambda: result.update(o=v.check([POWER_TOWER, "A: 2"], ["5", "2"])))
        idle_ticks = _cpu_ticks(pid)
        thread.start()
        deadline = time.monotonic() + 10
        while _cpu_ticks(pid) < idle_ticks + 10 and time.monotonic() < deadline:  # busy on the hang
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=30)
        assert result["o"] == [Outcome.ERROR, Outcome.CORRECT]
        assert v.stats.errors == 1 and v.stats.restarts == 1


def test_worker_killed_while_idle_is_replaced(fast_verifier):
    fast_verifier.score(["A: 1"], ["1"])
    pid = fast_verifier.worker_pid
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    assert fast_verifier.score(["A: 4"], ["4"]) == [1.0]
    assert fast_verifier.worker_pid != pid and fast_verifier.stats.restarts == 1


def test_close_stops_the_worker():
    v = Verifier()
    v.score(["A: 1"], ["1"])
    pid = v.worker_pid
    v.close()
    assert v.worker_pid is None and not _alive(pid)
    assert v.score(["A: 1"], ["1"]) == [1.0]  # a closed verifier starts a new worker on demand
    v.close()


def _run_script(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, env=env, **kwargs
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _cpu_ticks(pid: int) -> int:
    """User plus system CPU time of a process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # stat fields 14 and 15, counted after the command name


def _wait_dead(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_worker_does_not_outlive_its_parent():
    # A parent that exits normally without closing, and one killed outright while its worker is idle.
    normal = _run_script("""
        from llmac.rewards import math_reward, default_verifier
        assert math_reward("A: 1", "1") == 1.0
        print(default_verifier().worker_pid, flush=True)
    """)
    killed = _run_script("""
        import time
        from llmac.rewards import math_reward, default_verifier
        assert math_reward("A: 1", "1") == 1.0
        print(default_verifier().worker_pid, flush=True)
        time.sleep(60)
    """)
    normal_pid = int(normal.stdout.readline())
    killed_pid = int(killed.stdout.readline())
    assert _alive(killed_pid)
    killed.kill()
    assert normal.wait(timeout=30) == 0 and killed.wait(timeout=30) == -signal.SIGKILL
    assert _wait_dead(normal_pid) and _wait_dead(killed_pid)


def test_works_in_daemonic_and_forked_processes():
    # multiprocessing refuses children in daemonic processes (DataLoader workers); a forked copy of a
    # verifier in use must start its own worker and leave the parent's alone.
    script = _run_script("""
        import multiprocessing as mp
        from llmac.rewards import Verifier, VerifierConfig

        verifier = Verifier(VerifierConfig(timeout=1.0))

        def child(queue):
            outcomes = verifier.check(["A: 2", "\\\\boxed{9^{9^{9^{9^{9}}}}}"], ["2", "5"])
            queue.put(([o.value for o in outcomes], verifier.worker_pid))

        if __name__ == "__main__":
            assert verifier.score(["A: 1"], ["1"]) == [1.0]
            parent_pid = verifier.worker_pid
            queue = mp.get_context("fork").Queue()
            p = mp.get_context("fork").Process(target=child, args=(queue,), daemon=True)
            p.start()
            outcomes, child_worker = queue.get(timeout=60)
            p.join()
            print(outcomes, child_worker != parent_pid)
            print(verifier.score(["A: 3"], ["3"]), verifier.worker_pid == parent_pid)
    """)
    out, _ = script.communicate(timeout=90)
    assert script.returncode == 0
    assert out.splitlines() == ["['correct', 'timeout'] True", "[1.0] True"]


def test_answer_keys_group_equal_answers(verifier):
    keys = verifier.answer_keys(
        [
            "A: 18",
            "#### 18.00",
            "\\boxed{18}",
            "The answer is $18.",
            "A: 0.5",
            "\\boxed{\\frac{1}{2}}",
            "nothing",
            "A: 1,000",
        ]
    )
    assert keys == ["18", "18", "18", "18", "0.5", "0.5", None, "1000"]


def test_math_reward_and_batch_form_use_the_default_verifier():
    assert math_reward("A: 18", "18") == 1.0
    assert math_reward("A: 18", "19") == 0.0
    assert math_rewards(["A: 1", "Answer: -4", "nothing"], ["1", "-4", "1"]) == [1.0, 1.0, 0.0]


def test_registry_by_name_and_import_path():
    assert "math" in registered_rewards()
    assert get_reward_fn("math") is math_rewards
    assert get_reward_fn("llmac.rewards:math_rewards") is math_rewards

    @register_reward("test_length")
    def length_reward(completions: list[str], answers: list[str]) -> list[float]:
        return [float(len(c)) for c in completions]

    try:
        assert get_reward_fn("test_length")(["ab", "abc"], ["", ""]) == [2.0, 3.0]
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_length")(lambda completions, answers: [])
    finally:
        from llmac.rewards import registry as rewards

        rewards._REGISTRY.pop("test_length", None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_reward", r"unknown reward 'no_such_reward'.*'math'.*module:function"),
        ("no_such_pkg.module:fn", r"cannot import module 'no_such_pkg.module'"),
        ("llmac.rewards:no_such_fn", r"has no 'no_such_fn'"),
        ("llmac.rewards:logger", r"is not callable"),
        ("llmac.rewards:", r"expected 'package.module:function'"),
    ],
)
def test_registry_errors_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        get_reward_fn(spec)
