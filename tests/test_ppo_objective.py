"""PPO's objective alone, on one hand-built completion, against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from llmac.ppo.config import PPOConfig
from llmac.ppo.objective import Scores, ppo_loss
from llmac.rl.batch import Sample, build_token_batch
from llmac.rl.forward import TokenOutputs
from llmac.rl.targets import Targets

# Prompt of 3 tokens, a completion of 2 tokens in one step: the step's value is read at position 2
# (the prompt's last token), the tokens' values at positions 2 and 3.
BATCH = build_token_batch([Sample(0, [1, 2, 5], [3, 4], [1], "", "stop", 1.0, [-1.0, -2.0])], [1.0], 0)
OLD = torch.tensor([[-1.0, -2.0]])
OUTPUTS = TokenOutputs(
    logprobs=torch.tensor([[-1.0 + math.log(1.5), -2.0]]),  # ratios 1.5 and 1
    entropy=torch.tensor([[0.5, 1.5]]),
    values=torch.tensor([[0.0, 0.0, 0.6, 0.2, 0.0]]),
)
OPTIONS = dict(clip_low=0.2, clip_high=0.2, entropy_coef=0.1, kl_coef=0.5, kl_in="loss", kl_estimator="k1",
               value_clip=0.2, value_coef=0.5, loss_aggregation="token")  # fmt: skip


def _scores(old_values, returns, mask) -> Scores:
    targets = Targets(torch.tensor([[1.0, -2.0]]), returns, old_values, mask)
    return Scores(OLD, torch.tensor([[-1.0, -2.5]]), None, targets)


def test_token_gae_objective_by_hand():
    config = PPOConfig(advantage_estimator="token_gae", **OPTIONS)
    scores = _scores(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[True, True]]))
    loss, stats = ppo_loss(OUTPUTS, scores, BATCH, config)
    # Policy: token 0 ratio 1.5 clipped to 1.2 (A = 1): -1.2; token 1 ratio 1 (A = -2): 2; token mean 0.4.
    assert stats["policy_loss"] == pytest.approx(0.4)
    assert stats["clip_fraction"] == pytest.approx(0.5) and stats["ratio"] == pytest.approx(1.25)
    assert stats["approx_kl"] == pytest.approx((1 / 1.5 + math.log(1.5) - 1) / 2)
    assert stats["entropy"] == pytest.approx(1.0)
    # Values 0.6, 0.2 (old 0.5, 0.5; returns 1, 0): errors 0.16, 0.04; token 1 clipped to 0.3 -> 0.09.
    assert stats["value_loss"] == pytest.approx(0.5 * (0.16 + 0.09) / 2)
    assert stats["value_error"] == pytest.approx(0.1) and stats["value_clip_fraction"] == pytest.approx(0.5)
    kl = (math.log(1.5) + 0.5) / 2  # k1 = logp - ref per token, token mean
    expected = 0.4 - 0.1 * 1.0 + 0.5 * kl + 0.5 * 0.0625
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Value warm-up: the policy term weighs 0, its stats are still reported.
    warm, warm_stats = ppo_loss(OUTPUTS, scores, BATCH, config, policy_weight=0.0)
    assert warm.item() == pytest.approx(expected - 0.4, rel=1e-6) and warm_stats[
        "policy_loss"
    ] == pytest.approx(0.4)


def test_step_gae_objective_reads_values_at_step_starts():
    config = PPOConfig(advantage_estimator="step_gae", **OPTIONS)
    scores = _scores(torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.tensor([[True]]))
    _, stats = ppo_loss(OUTPUTS, scores, BATCH, config)
    assert stats["value_loss"] == pytest.approx(0.5 * 0.16)  # V(s_0) = 0.6 at position 2 only


def test_critic_free_objective_has_no_value_terms_and_kl_only_in_the_loss():
    config = PPOConfig(advantage_estimator="grpo", **{**OPTIONS, "kl_coef": 0.0})
    outputs = TokenOutputs(OUTPUTS.logprobs, OUTPUTS.entropy, None)
    loss, stats = ppo_loss(outputs, _scores(None, None, None), BATCH, config)
    assert "value_loss" not in stats
    assert loss.item() == pytest.approx(0.4 - 0.1, rel=1e-6)
