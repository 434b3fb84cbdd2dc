"""Critique-RL rewards on hand-computed outcomes."""

from __future__ import annotations

import pytest

from llmac.critique.rewards import (
    CritiqueOutcome,
    critique_reward_names,
    critique_rewards,
    get_critique_reward,
)
from llmac.errors import ConfigError

# (original correct, verdict, refined correct)
CASES = [
    CritiqueOutcome(True, True, True),  # right verdict, kept right
    CritiqueOutcome(True, False, False),  # wrong verdict, refined into a wrong answer
    CritiqueOutcome(False, False, True),  # right verdict, fixed
    CritiqueOutcome(False, False, False),  # right verdict, not fixed
    CritiqueOutcome(False, True, False),  # wrong verdict
    CritiqueOutcome(False, None, True),  # missing verdict, fixed anyway
    CritiqueOutcome(True, None, True),  # missing verdict
]


def test_names():
    assert critique_reward_names() == ["correct", "delta", "discrimination", "helpfulness"]
    with pytest.raises(ConfigError, match="unknown critique reward 'r_delta'"):
        get_critique_reward("r_delta")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("discrimination", [1, -1, 1, 1, -1, -1, -1]),
        ("helpfulness", [1.2, -1, 1.2, 0.2, -1, -1, -1]),
        ("delta", [0, -1, 1, 0, 0, 1, 0]),
        ("correct", [1, 0, 1, 0, 0, 1, 1]),
    ],
)
def test_rewards_by_name(name, expected):
    assert critique_rewards(name, CASES) == pytest.approx(expected)


def test_stage_one_needs_no_refinement_but_the_others_do():
    assert critique_rewards("discrimination", [CritiqueOutcome(False, False)]) == [1.0]
    for name in ("helpfulness", "delta", "correct"):
        with pytest.raises(ValueError, match="refined_correct"):
            critique_rewards(name, [CritiqueOutcome(False, False)])
    # a wrong verdict in stage II is -1 before the refinement is looked at
    assert critique_rewards("helpfulness", [CritiqueOutcome(True, False)]) == [-1.0]
