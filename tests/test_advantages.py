"""Advantage estimators against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from llmac.advantages import (
    broadcast_to_tokens,
    gae,
    grpo_advantages,
    lite_ppo_advantages,
    masked_whiten,
    overlong_penalty,
    rloo_advantages,
)
from llmac.rl.estimators import ESTIMATORS, Estimator, get_estimator, register_estimator
from llmac.rl.targets import step_gae_targets

T, F = True, False
NAN = float("nan")


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


def test_gae_hand_computed_with_padding():
    gamma, lam = 0.9, 0.8
    # Row 0: three steps, outcome reward at the last. Row 1: one step, then padding holding NaN
    # and junk. Row 2: empty.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 7.0, NAN], [3.0, 3.0, 3.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, NAN, 9.0], [NAN, 1.0, 2.0]])
    mask = torch.tensor([[T, T, T], [T, F, F], [F, F, F]])
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)

    d2 = 1.0 + 0.9 * 0.0 - 0.7  # 0.3 (terminal: next value 0)
    d1 = 0.0 + 0.9 * 0.7 - 0.6  # 0.03
    d0 = 0.0 + 0.9 * 0.6 - 0.5  # 0.04
    a2 = d2  # 0.3
    a1 = d1 + 0.72 * a2  # 0.246
    a0 = d0 + 0.72 * a1  # 0.21712
    b0 = 0.5 + 0.9 * 0.0 - 0.2  # 0.3
    close(advantages, [[a0, a1, a2], [b0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    close(advantages[0], [0.21712, 0.246, 0.3])
    close(returns, [[a0 + 0.5, a1 + 0.6, a2 + 0.7], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert not advantages.isnan().any() and not returns.isnan().any()


def test_gae_gamma_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0], [0.3, 0.4, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 0.9], [0.1, 0.2, 5.0, 5.0]])
    mask = torch.tensor([[T, T, T, T], [T, T, F, F]])
    advantages, returns = gae(rewards, values, mask)
    # Suffix sums of the rewards, by hand.
    expected_returns = [[0.9, 0.8, 1.0, 1.0], [0.7, 0.4, 0.0, 0.0]]
    close(returns, expected_returns)
    close(advantages, [[0.4, 0.4, 0.7, 0.1], [0.6, 0.2, 0.0, 0.0]])


def test_gae_lambda_zero_is_one_step_td():
    rewards = torch.tensor([[0.0, 1.0]])
    values = torch.tensor([[0.25, 0.5]])
    advantages, _ = gae(rewards, values, torch.tensor([[T, T]]), gamma=0.5, lam=0.0)
    close(advantages, [[0.0 + 0.5 * 0.5 - 0.25, 1.0 - 0.5]])


def test_gae_rejects_non_prefix_mask():
    with pytest.raises(ValueError, match="prefix"):
        gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[F, T, T]]))


def test_broadcast_to_tokens():
    per_step = torch.tensor([[0.1, 0.2, 0.3], [5.0, 0.0, 0.0]])
    token_step = torch.tensor([[-1, -1, 0, 0, 1, 2, 2, -1], [-1, 0, 0, 0, -1, -1, -1, -1]])
    out = broadcast_to_tokens(per_step, token_step)
    close(out, [[0, 0, 0.1, 0.1, 0.2, 0.3, 0.3, 0], [0, 5.0, 5.0, 5.0, 0, 0, 0, 0]])


REWARDS_2x4 = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])


def test_grpo_advantages():
    # Row 0: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = 0.57735.
    # Row 1: mean 0.25, unbiased std sqrt((3 * 0.0625 + 0.5625) / 3) = sqrt(0.25) = 0.5.
    s0 = 0.57735 + 1e-4
    s1 = 0.5 + 1e-4
    expected = [[0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0], [-0.25 / s1, -0.25 / s1, -0.25 / s1, 0.75 / s1]]
    close(grpo_advantages(REWARDS_2x4), expected, atol=1e-4)
    close(grpo_advantages(REWARDS_2x4, scale=False), [[0.5, -0.5, -0.5, 0.5], [-0.25, -0.25, -0.25, 0.75]])


def test_rloo_advantages():
    # r_i minus the mean of the other three.
    expected = [
        [1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3],
        [0 - 1 / 3, 0 - 1 / 3, 0 - 1 / 3, 1 - 0.0],
    ]
    close(rloo_advantages(REWARDS_2x4), expected)
    with pytest.raises(ValueError):
        rloo_advantages(torch.ones(3, 1))


def test_lite_ppo_advantages():
    # Batch of 8: mean 3/8; squared deviations 3 * 0.625^2 + 5 * 0.375^2 = 1.875; unbiased / 7.
    s = math.sqrt(1.875 / 7) + 1e-6
    expected = [[0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s], [-0.25 / s, -0.25 / s, -0.25 / s, 0.75 / s]]
    close(lite_ppo_advantages(REWARDS_2x4), expected)
    assert math.isclose(math.sqrt(1.875 / 7), 0.517549, abs_tol=1e-6)


@pytest.mark.parametrize("name", ["grpo", "rloo", "lite_ppo"])
def test_equal_rewards_give_zero_advantages(name):
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    close(get_estimator(name).group_advantages(rewards), [[0.0] * 4] * 2)


def test_single_sample_groups_do_not_give_nan():
    close(grpo_advantages(torch.tensor([[1.0], [0.0]])), [[0.0], [0.0]])
    close(lite_ppo_advantages(torch.tensor([[1.0]])), [[0.0]])


def test_overlong_penalty_regions_and_boundaries():
    # max 20, buffer 5: free up to 15, linear to -1 at 20, -1 beyond.
    lengths = torch.tensor([0, 14, 15, 16, 18, 19, 20, 21, 100])
    expected = [0.0, 0.0, 0.0, (15 - 16) / 5, (15 - 18) / 5, (15 - 19) / 5, -1.0, -1.0, -1.0]
    close(overlong_penalty(lengths, max_length=20, buffer=5), expected)
    # buffer == max_length: every token costs.
    close(overlong_penalty(torch.tensor([0, 2, 4, 5]), max_length=4, buffer=4), [0.0, -0.5, -1.0, -1.0])
    for buffer in (0, 21):
        with pytest.raises(ValueError):
            overlong_penalty(lengths, max_length=20, buffer=buffer)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0], [3.0, NAN]])
    mask = torch.tensor([[T, T], [T, F]])
    # Mean 2, biased variance (1 + 0 + 1) / 3.
    s = math.sqrt(2 / 3)
    close(masked_whiten(x, mask), [[-1 / s, 0.0], [1 / s, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[2 - 1 / s, 2.0], [2 + 1 / s, 0.0]])
    out = masked_whiten(torch.randn(4, 7), torch.ones(4, 7, dtype=torch.bool))
    assert abs(out.mean().item()) < 1e-5 and abs(out.var(unbiased=False).item() - 1) < 1e-4


def test_masked_whiten_over_processes_uses_the_whole_batchs_statistics():
    x, mask = torch.randn(6, 5), torch.rand(6, 5) > 0.3
    whole = masked_whiten(x, mask)
    halves = [(x[:3], mask[:3]), (x[3:], mask[3:])]

    def stats(part, part_mask):
        kept = torch.where(part_mask, part, 0.0)
        return torch.stack([kept.sum(), (kept * kept).sum(), part_mask.sum()])

    # Each "process" whitens its half; the reduction adds the other half's sums, as an all-reduce would.
    for i, (part, part_mask) in enumerate(halves):
        other = stats(*halves[1 - i])
        out = masked_whiten(part, part_mask, sum_over_processes=lambda s, other=other: s + other)
        close(out, whole[3 * i : 3 * i + 3].tolist())


def test_estimator_registry_says_what_each_estimator_needs():
    assert {name: e.group_advantages for name, e in ESTIMATORS.items() if not e.needs_value_model} == {
        "grpo": grpo_advantages,
        "rloo": rloo_advantages,
        "lite_ppo": lite_ppo_advantages,
    }
    assert {name: e.value_positions for name, e in ESTIMATORS.items() if e.needs_value_model} == {
        "step_gae": "step_positions",
        "token_gae": "completion_positions",
    }
    with pytest.raises(ValueError, match="already registered"):
        register_estimator(Estimator("grpo", group_advantages=grpo_advantages))
    with pytest.raises(ValueError, match="exactly one of"):
        register_estimator(Estimator("both", group_advantages=grpo_advantages, targets=step_gae_targets))
    with pytest.raises(ValueError, match="unknown advantage estimator 'vtrace'"):
        get_estimator("vtrace")
