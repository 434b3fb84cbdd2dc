"""Losses and per-token quantities against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from llmac.losses import (
    aggregate,
    entropy_from_logits,
    explained_variance,
    kl_penalty,
    masked_mean,
    masked_sum,
    policy_loss,
    token_logprobs,
    value_loss,
)

T, F = True, False
NAN = float("nan")


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


def test_masked_sum_and_mean():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[T, T, F], [F, F, F]])
    close(masked_sum(x, mask), 3.0)
    close(masked_mean(x, mask), 1.5)
    close(masked_mean(x, mask, dim=-1), [1.5, 0.0])
    close(masked_sum(x, mask, dim=0), [1.0, 2.0, 0.0])
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)


def test_token_logprobs_matches_log_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=gen) * 3
    labels = torch.randint(0, 11, (2, 5), generator=gen)
    labels[1, 3:] = -100
    for temperature in (1.0, 0.7):
        expected = torch.log_softmax(logits / temperature, dim=-1)
        expected = expected.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(token_logprobs(logits, labels, temperature), expected)
    # Padding labels read index 0.
    torch.testing.assert_close(token_logprobs(logits, labels)[1, 3:], torch.log_softmax(logits, -1)[1, 3:, 0])


def test_token_logprobs_small_case():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # probs 1/4, 3/4
    close(token_logprobs(logits, torch.tensor([[1]])), [[math.log(0.75)]])
    # Temperature 2 halves the logits: weights 1 and sqrt(3).
    close(token_logprobs(logits, torch.tensor([[0]]), temperature=2.0), [[-math.log(1 + math.sqrt(3))]])


def test_entropy_from_logits():
    close(entropy_from_logits(torch.full((2, 3, 7), 0.4)), [[math.log(7)] * 3] * 2)
    ninf = float("-inf")
    logits = torch.tensor([[[0.0, 0.0, ninf], [5.0, ninf, ninf]]])
    close(entropy_from_logits(logits), [[math.log(2), 0.0]])
    # Probabilities 1/4, 3/4.
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    close(entropy_from_logits(torch.tensor([[[0.0, math.log(3.0)]]])), [[h]])


def test_kl_penalty_estimators():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])
    # logp - ref = log 2 = 0.693147
    close(kl_penalty(logp, ref, "k1"), [0.693147])
    close(kl_penalty(logp, ref, "k2"), [0.5 * 0.693147**2])
    close(kl_penalty(logp, ref, "k3"), [0.5 + 0.693147 - 1])  # exp(-log 2) - (-log 2) - 1
    close(kl_penalty(ref, logp, "k3"), [2.0 - 0.693147 - 1])
    close(kl_penalty(logp, logp, "k3"), [0.0])
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(1000, generator=gen) * 4, torch.randn(1000, generator=gen) * 4
    assert (kl_penalty(a, b, "k3") >= 0).all()
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN], [NAN, NAN, NAN]])
MASK = torch.tensor([[T, T, T], [T, F, F], [F, F, F]])


def test_aggregate_token_and_sequence():
    close(aggregate(LOSS, MASK, "token"), (1 + 2 + 3 + 4) / 4)
    close(aggregate(LOSS, MASK, "token", num_tokens=8), 10 / 8)
    # Row means 2 and 4; the empty row is skipped.
    close(aggregate(LOSS, MASK, "sequence"), (2 + 4) / 2)
    close(aggregate(LOSS, MASK, "sequence", num_tokens=8), 3.0)
    close(aggregate(LOSS, MASK, "sequence", num_sequences=4), 6 / 4)
    close(aggregate(LOSS, torch.zeros_like(MASK), "token"), 0.0)
    close(aggregate(LOSS, torch.zeros_like(MASK), "sequence"), 0.0)
    with pytest.raises(ValueError, match="token, sequence"):
        aggregate(LOSS, MASK, "batch")


def test_aggregate_gradient_ignores_nan_padding():
    loss = LOSS.clone().requires_grad_(True)
    aggregate(loss, MASK, "token").backward()
    close(loss.grad, [[0.25, 0.25, 0.25], [0.25, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_policy_loss_ratio_one_is_minus_mean_advantage():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, 7.0, 7.0]])
    adv = torch.tensor([[1.0, -2.0, 0.5], [3.0, NAN, NAN]])
    mask = torch.tensor([[T, T, T], [T, F, F]])
    old = torch.where(mask, logp, torch.tensor(-1000.0))  # padding that would overflow exp
    loss, stats = policy_loss(logp, old, adv, mask)
    close(loss, -(1.0 - 2.0 + 0.5 + 3.0) / 4)
    close(stats["clip_fraction"], 0.0)
    close(stats["ratio"], 1.0)
    close(stats["approx_kl"], 0.0)
    loss, _ = policy_loss(logp, old, adv, mask, aggregation="sequence")
    close(loss, -((1.0 - 2.0 + 0.5) / 3 + 3.0) / 2)


@pytest.mark.parametrize(("clip_high", "expected"), [(0.2, -1.2), (0.28, -1.28)])
def test_policy_loss_clip_higher(clip_high, expected):
    old = torch.tensor([[-1.0]])
    logp = old + math.log(1.5)
    loss, stats = policy_loss(logp, old, torch.tensor([[1.0]]), torch.tensor([[T]]), clip_high=clip_high)
    close(loss, expected)
    close(stats["clip_fraction"], 1.0)
    close(stats["ratio"], 1.5)


def test_policy_loss_negative_advantage_clipped_low():
    old = torch.tensor([[-1.0]])
    logp = old + math.log(0.5)
    loss, stats = policy_loss(logp, old, torch.tensor([[-1.0]]), torch.tensor([[T]]), clip_high=0.28)
    close(loss, 0.8)  # -min(0.5 * -1, 0.8 * -1)
    close(stats["clip_fraction"], 1.0)


def test_policy_loss_gradients_and_stats():
    ratios = [1.5, 1.1, 0.5, 0.5, 1.5]
    adv = torch.tensor([[1.0, 1.0, -1.0, 1.0, -1.0]])
    # Token by token (ε = 0.2): clipped at 1.2; unclipped 1.1; clipped at 0.8 (-0.8 < -0.5);
    # unclipped 0.5 (0.5 < 0.8); unclipped 1.5 (-1.5 < -1.2).
    old = torch.full((1, 5), -2.0)
    logp = (old + torch.log(torch.tensor([ratios]))).requires_grad_(True)
    mask = torch.ones(1, 5, dtype=torch.bool)
    loss, stats = policy_loss(logp, old, adv, mask)
    close(loss, -(1.2 + 1.1 - 0.8 + 0.5 - 1.5) / 5)
    loss.backward()
    # d(-ρA/5)/dlogp = -ρA/5 on unclipped tokens; 0 where the clipped term was chosen.
    close(logp.grad, [[0.0, -1.1 / 5, 0.0, -0.5 / 5, 1.5 / 5]])
    close(stats["clip_fraction"], 2 / 5)
    close(stats["ratio"], (1.5 + 1.1 + 0.5 + 0.5 + 1.5) / 5)
    # k3(old || new) per token = 1/ρ + log ρ - 1.
    close(stats["approx_kl"], sum(1 / r + math.log(r) - 1 for r in ratios) / 5)
    assert all(not v.requires_grad for v in stats.values())


def test_value_loss_clipping():
    old = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.0]])
    values = torch.tensor([[0.9, 0.6, 0.1, 0.1, 0.0]], requires_grad=True)
    returns = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[T, T, T, T, F]])
    loss, stats = value_loss(values, old, returns, mask, clip_range=0.2)
    # 0.9 -> clip 0.7: max(0.01, 0.09); 0.6 in range: 0.16; 0.1 -> 0.3 vs 0: max(0.01, 0.09);
    # 0.1 -> 0.3 vs 1: max(0.81, 0.49).
    per = [0.5 * 0.09, 0.5 * 0.16, 0.5 * 0.09, 0.5 * 0.81]
    close(loss, sum(per) / 4)
    close(stats["value_clip_fraction"], 2 / 4)
    close(stats["value_error"], (0.01 + 0.16 + 0.01 + 0.81) / 4)
    loss.backward()
    # Clipped positions have no gradient; others (v - R) / 4.
    close(values.grad, [[0.0, -0.4 / 4, 0.0, -0.9 / 4, 0.0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range=None)
    close(loss, 0.5 * (0.01 + 0.16 + 0.01 + 0.81) / 4)
    close(stats["value_clip_fraction"], 0.0)


def test_explained_variance():
    target = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN]])
    mask = torch.tensor([[T, T, T], [T, F, F]])
    assert explained_variance(target.clone(), target, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(target, 2.5), target, mask) == pytest.approx(0.0, abs=1e-6)
    # Residuals [-1, 0, 1, 0] around a mean of 0: variance 0.5 against Var(target) = 1.25.
    predicted = torch.tensor([[2.0, 2.0, 2.0], [4.0, 0.0, 0.0]])
    assert explained_variance(predicted, target, mask) == pytest.approx(1 - 0.5 / 1.25)
    assert explained_variance(torch.zeros(3), torch.full((3,), 0.7), torch.ones(3, dtype=torch.bool)) == 0.0
