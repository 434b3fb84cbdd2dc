"""The step critic read as a verdict-giving critic: hand-computed Acc@Dis, first-error F1 and best-of-N."""

from __future__ import annotations

import pytest

from llmac.critique import step_critic_baseline

# Two problems x 2 solutions; the step values a step critic would give them.
VALUES = [[0.9, 0.8], [0.9, 0.3], [0.2, 0.7], [0.6, 0.55]]
CORRECT = [True, False, False, True]
TRUE_FIRST = [-1, 1, 1, -1]


@pytest.fixture
def scripted_critic(monkeypatch):
    monkeypatch.setattr(step_critic_baseline, "load_critic", lambda path: "model")
    monkeypatch.setattr(step_critic_baseline, "load_critic_tokenizer", lambda path: "tokenizer")
    monkeypatch.setattr(step_critic_baseline, "critic_delimiter", lambda model: "\n")
    monkeypatch.setattr(step_critic_baseline, "score_steps", lambda *args: [list(v) for v in VALUES])


def test_step_critic_judged_like_a_generative_critic(scripted_critic):
    result = step_critic_baseline.step_critic_summary(
        "critic", ["q1"] * 4, ["s"] * 4, CORRECT, n=2, true_first_errors=TRUE_FIRST
    )
    # least values 0.8, 0.3, 0.2, 0.55 -> accepted, rejected, rejected, accepted: all four right
    assert result["discrimination"]["acc_dis"] == 1.0
    # first steps below 0.5: -1, 1, 0, -1 -> erroneous 1 of 2 exact, error-free 2 of 2 -> F1 = 2/(2 + 1)
    assert result["first_error"]["acc_erroneous"] == 0.5 and result["first_error"]["acc_correct"] == 1.0
    assert result["first_error"]["f1"] == pytest.approx(2 / 3)
    # problem 1 picks solution 0 (0.8 > 0.3, right); problem 2 picks solution 1 (0.55 > 0.2, right)
    assert result["best_of_n"] == 1.0
    assert result["solution_auc"] == 1.0


def test_a_higher_threshold_rejects_right_answers(scripted_critic):
    result = step_critic_baseline.step_critic_summary(
        "critic", ["q"] * 4, ["s"] * 4, CORRECT, n=2, true_first_errors=None, threshold=0.6
    )
    # 0.55 < 0.6: the last (right) solution is now rejected
    assert result["discrimination"]["acc_dis"] == 0.75 and result["discrimination"]["acc_dis_correct"] == 0.5
    assert "first_error" not in result
