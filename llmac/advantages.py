"""Advantage estimators, interchangeable by name.

- ``gae``: generalized advantage estimation with a critic, over steps (one value per step, the
  advantage then spread over each step's tokens with ``broadcast_to_tokens``) or over tokens.
- Critic-free, one scalar reward per sequence, grouped ``[G, n]`` (G prompts, n samples each):
  ``grpo_advantages``, ``rloo_advantages`` and ``lite_ppo_advantages`` (registered by name, with the
  GAE estimators, in :mod:`llmac.rl.estimators`).
- Shaping and normalisation: ``overlong_penalty`` (ByteDance DAPO) and ``masked_whiten``.

Advantages are targets, so every function here runs without autograd.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from llmac.losses import zeros_where_not


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over the S positions (steps or tokens) of each row.

    ``values[b, k]`` is V(s_k), the value of the state before position k's action, and
    ``rewards[b, k]`` the reward received at position k. Row b's valid positions are the prefix
    ``mask[b, :L_b]``; the value after the last one is 0 (terminal).
    ``δ_k = r_k + γ·V(s_{k+1}) - V(s_k)``, ``A_k = Σ_l (γλ)^l δ_{k+l}``, ``R_k = A_k + V(s_k)``.
    Returns ``(advantages, returns)``, both 0 at masked positions, whatever the padding holds.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape or rewards.dim() != 2:
        raise ValueError(
            f"rewards, values and mask must share one [B, S] shape, got "
            f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}"
        )
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("gae expects each row's valid positions to be a left-aligned prefix of the mask")
    values = zeros_where_not(mask, values)
    rewards = zeros_where_not(mask, rewards)
    advantages = torch.zeros_like(values)
    next_value = values.new_zeros(values.shape[0])
    next_advantage = values.new_zeros(values.shape[0])
    for k in reversed(range(values.shape[1])):
        delta = rewards[:, k] + gamma * next_value - values[:, k]
        advantage = zeros_where_not(mask[:, k], delta + gamma * lam * next_advantage)
        advantages[:, k] = advantage
        # Padded positions hold value 0 and advantage 0, so the last valid position sees a terminal.
        next_value, next_advantage = values[:, k], advantage
    returns = zeros_where_not(mask, advantages + values)
    return advantages, returns


@torch.no_grad()
def broadcast_to_tokens(per_step: Tensor, token_step: Tensor) -> Tensor:
    """Spread per-step values ``[B, S]`` over tokens ``[B, T]``.

    ``token_step[b, t]`` is the step index token t belongs to, or -1 for tokens outside every step
    (prompt, padding), which get 0.
    """
    inside = token_step >= 0
    gathered = per_step.gather(1, token_step.clamp(min=0))
    return zeros_where_not(inside, gathered)


def _std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased std; 0 (instead of NaN) when there is a single sample."""
    count = x.numel() if dim is None else x.shape[dim]
    if count < 2:
        return torch.zeros_like(x.sum() if dim is None else x.sum(dim=dim, keepdim=True))
    return x.std() if dim is None else x.std(dim=dim, keepdim=True)


@torch.no_grad()
def grpo_advantages(rewards: Tensor, eps: float = 1e-4, scale: bool = True) -> Tensor:
    """GRPO group z-score ``(r - mean_group) / (std_group + eps)``, std unbiased as in TRL.

    ``scale=False`` only centres: ``r - mean_group`` (Dr. GRPO). A group of equal rewards gives 0.
    """
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    if not scale:
        return centred
    return centred / (_std(rewards, dim=-1) + eps)


@torch.no_grad()
def rloo_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE leave-one-out: ``r_i`` minus the mean of the other n - 1 rewards of its group."""
    n = rewards.shape[-1]
    if n < 2:
        raise ValueError(f"RLOO needs at least 2 samples per group, got {n}")
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (n - 1)
    return rewards - others_mean


@torch.no_grad()
def lite_ppo_advantages(rewards: Tensor, eps: float = 1e-6) -> Tensor:
    """Lite PPO (arXiv 2508.08221): ``(r - mean_group) / (std_batch + eps)``, batch std unbiased.

    Group-mean centring keeps the per-prompt baseline; the batch-wide scale does not blow up the
    advantages of a group whose rewards barely differ.
    """
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    return centred / (_std(rewards) + eps)


@torch.no_grad()
def overlong_penalty(lengths: Tensor, max_length: int, buffer: int) -> Tensor:
    """ByteDance DAPO soft overlong punishment, added to the reward of each response.

    0 when ``len <= max_length - buffer``; ``((max_length - buffer) - len) / buffer`` inside the
    buffer (0 down to -1, linearly); -1 beyond ``max_length``.
    """
    if not 0 < buffer <= max_length:
        raise ValueError(f"need 0 < buffer <= max_length, got buffer={buffer}, max_length={max_length}")
    threshold = max_length - buffer
    lengths = lengths.to(torch.float32)
    penalty = ((threshold - lengths) / buffer).clamp(min=-1.0, max=0.0)
    return penalty


@torch.no_grad()
def masked_whiten(
    x: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    sum_over_processes: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Normalise ``x`` over the masked entries to zero mean and unit (biased) variance.

    ``(x - mean) / (std + eps)``; with ``shift_mean=False`` the mean is added back (only the scale
    changes). Masked-out entries are 0. ``sum_over_processes`` sums the statistics (sum, sum of
    squares, count) across processes, so every process whitens with the whole batch's mean and std.
    """
    stats = torch.stack([zeros_where_not(mask, x).sum(), zeros_where_not(mask, x * x).sum(), mask.sum()])
    if sum_over_processes is not None:
        stats = sum_over_processes(stats)
    total, squares, count = stats.tolist()
    mean = total / max(count, 1)
    std = math.sqrt(max(squares / max(count, 1) - mean * mean, 0.0))
    whitened = (x - mean) / (std + eps)
    if not shift_mean:
        whitened = whitened + mean
    return zeros_where_not(mask, whitened)
