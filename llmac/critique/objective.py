"""Critique-RL's objective (pure functions of tensors; ALGORITHMS.md section 6).

The critic is trained by policy gradient with the RLOO baseline over the k critiques of one solution:

1. :func:`kl_shaped_rewards`: each critique's reward minus ``kl_coef`` times its summed k1 KL to the
   reference (``log pi_old - log pi_ref`` over its tokens), the sequence-level KL-in-reward of RLOO
   (Ahmadian et al. 2024, TRL's RLOOTrainer);
2. :func:`critique_advantages`: the registered ``rloo`` estimator (:mod:`llmac.rl.estimators`) on those
   rewards, grouped ``[G, k]``: ``A_i = r_i - mean_{j != i} r_j``;
3. :func:`critique_policy_loss`: ``-A_i`` times the ratio of each of the critique's tokens (PPO-clipped
   when later passes move the policy; on the first pass the ratio is 1 and its gradient is REINFORCE's
   ``-A_i * grad log pi(token)``), aggregated over tokens or sequences.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmac.losses import masked_sum, policy_loss, zeros_where_not
from llmac.rl.estimators import get_estimator


@torch.no_grad()
def kl_shaped_rewards(
    rewards: Tensor, old_logprobs: Tensor, ref_logprobs: Tensor | None, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """``(r - kl_coef * KL, KL)`` per critique ``[B]``, KL the sum of ``old - ref`` over its tokens
    (k1: unbiased for the sequence's KL to the reference). Without a reference KL is 0."""
    if ref_logprobs is None:
        return rewards.clone(), torch.zeros_like(rewards)
    kl = masked_sum(old_logprobs - ref_logprobs, mask, dim=-1)
    return rewards - kl_coef * kl, kl


@torch.no_grad()
def critique_advantages(rewards: Tensor, group_size: int, estimator: str = "rloo") -> Tensor:
    """Advantages ``[B]`` of ``rewards`` ``[B]`` laid out group after group (``group_size`` critiques of
    one solution each), by the registered group estimator ``estimator`` (RLOO by default)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    group_advantages = get_estimator(estimator).group_advantages
    if group_advantages is None:
        raise ValueError(f"advantage estimator {estimator!r} needs a value model; Critique-RL has none")
    return group_advantages(rewards.view(-1, group_size)).flatten()


def critique_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip: float = 0.2,
    aggregation: str = "token",
) -> tuple[Tensor, dict[str, float]]:
    """The loss to minimise and its stats: each critique's advantage ``[B]`` given to all of its tokens
    ``[B, T]``, PPO-clipped at ``1 +- clip`` (:func:`llmac.losses.policy_loss`)."""
    per_token = zeros_where_not(mask, advantages[:, None].expand_as(mask).to(logprobs.dtype))
    loss, stats = policy_loss(logprobs, old_logprobs, per_token, mask, clip, clip, aggregation)
    return loss, {"policy_loss": loss.item(), **{k: v.item() for k, v in stats.items()}}
