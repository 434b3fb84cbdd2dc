"""The verifier's batch deadline: adversarial batches end near it, items past it score 0 and are counted,
and the normal items of the same batch still score right."""

from __future__ import annotations

import time

import pytest

from llmac.errors import ConfigError
from llmac.rewards import Outcome, Verifier, VerifierConfig
from llmac.rewards.answers import load_math_verify

# sympy never finishes this without a timeout (see test_rewards.py); each one costs a full item timeout.
HANG = "so the result is \\boxed{9^{9^{9^{9^{9}}}}}"
SLACK = 1.5  # pipe round trips, killing the worker, a loaded 2-core machine
NORMAL = [("A: 1", "1", Outcome.CORRECT), ("A: 5", "6", Outcome.WRONG), ("\\boxed{3}", "3", Outcome.CORRECT)]


def test_default_deadline_bounds_a_512_item_batch():
    config = VerifierConfig()
    assert config.batch_seconds(512) == pytest.approx(30 + 0.1 * 512)  # 81 s, where 512 x 5 s is 43 min
    assert VerifierConfig(batch_timeout=None).batch_seconds(512) == float("inf")
    with pytest.raises(ConfigError, match=r"VerifierConfig.batch_timeout = 0: must be > 0"):
        VerifierConfig(batch_timeout=0)


@pytest.mark.parametrize("soft_interrupt", [True, False], ids=["signal", "kill"])
def test_worker_batch_ends_at_its_deadline_and_counts_the_rest(soft_interrupt):
    """Normal items first, then 20 hangs of 1 s each: two time out, the deadline (2.5 s) drops the rest."""
    config = VerifierConfig(
        timeout=1.0,
        kill_grace=0.5,
        soft_interrupt=soft_interrupt,
        batch_timeout=2.5,
        batch_timeout_per_item=0,
    )
    completions = [c for c, _, _ in NORMAL] + [HANG] * 20
    golds = [g for _, g, _ in NORMAL] + ["5"] * 20
    with Verifier(config) as v:
        v.score(["A: 1"], ["1"])  # the worker is up: time only the batch
        v.reset_stats()
        started = time.perf_counter()
        outcomes = v.check(completions, golds)
        elapsed = time.perf_counter() - started
        stats = v.stats
        assert outcomes[:3] == [expected for _, _, expected in NORMAL]
        hangs = outcomes[3:]
        assert set(hangs) <= {Outcome.TIMEOUT, Outcome.PAST_DEADLINE} and hangs[-1] is Outcome.PAST_DEADLINE
        # Each timeout takes >= 1 s of the 2.5 s, so at most two hangs end as timeouts.
        assert hangs.count(Outcome.TIMEOUT) <= 2 and hangs.count(Outcome.PAST_DEADLINE) >= 18
        assert 2.5 * 0.95 <= elapsed < 2.5 + SLACK, f"the batch took {elapsed:.2f}s, its deadline is 2.5s"
        assert stats.past_deadline == hangs.count(Outcome.PAST_DEADLINE)
        assert stats.timeouts == hangs.count(Outcome.TIMEOUT) and stats.correct == 2 and stats.wrong == 1
        assert stats.scored == 23
        # The worker busy at the deadline was replaced; the next batch scores normally.
        assert v.score(["A: 7", "A: 8"], ["7", "9"]) == [1.0, 0.0]


def test_512_adversarial_items_cost_the_deadline_not_512_timeouts():
    """The issue's case, scaled: 512 hangs at 0.5 s each would take 256 s; the deadline is 6.1 s."""
    config = VerifierConfig(timeout=0.5, kill_grace=0.5, batch_timeout=1.0, batch_timeout_per_item=0.01)
    completions = ["A: 2"] * 16 + [HANG] * 496
    with Verifier(config) as v:
        v.score(["A: 1"], ["1"])
        started = time.perf_counter()
        scores = v.score(completions, ["2"] * 512)
        elapsed = time.perf_counter() - started
        assert scores[:16] == [1.0] * 16 and scores[16:] == [0.0] * 496
        assert config.batch_seconds(512) == pytest.approx(6.12)
        assert elapsed < 6.12 + SLACK, f"512 adversarial items took {elapsed:.1f}s"
        stats = v.stats
        assert stats.past_deadline + stats.timeouts == 496 and stats.past_deadline >= 496 - 6.12 / 0.5


def test_inline_batch_deadline_interrupts_the_running_item():
    """In the main thread the SIGALRM of the item running at the deadline fires at the deadline."""
    load_math_verify()  # the import is not the batch's time
    config = VerifierConfig(mode="inline", timeout=1.0, batch_timeout=1.5, batch_timeout_per_item=0)
    with Verifier(config) as v:
        started = time.perf_counter()
        outcomes = v.check(["A: 1", "A: 2", HANG, HANG, "A: 3"], ["1", "3", "5", "5", "3"])
        elapsed = time.perf_counter() - started
        # The first hang gets its full second; the second only what is left of the 1.5 s.
        assert outcomes == [Outcome.CORRECT, Outcome.WRONG, Outcome.TIMEOUT] + [Outcome.PAST_DEADLINE] * 2
        assert 1.5 * 0.95 <= elapsed < 1.5 + 0.5
        assert (v.stats.timeouts, v.stats.past_deadline) == (1, 2)
