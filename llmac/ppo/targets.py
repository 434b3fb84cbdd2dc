"""From a batch of rollouts and the models' outputs to what PPO regresses on: advantages per token and
value targets (per step for ``step_gae``, per token for ``token_gae``). Pure functions of tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmac.advantages import broadcast_to_tokens, gae
from llmac.ppo.experience import TokenBatch


@dataclass
class Targets:
    advantages: torch.Tensor  # [B, T], 0 on padding
    returns: torch.Tensor | None = None  # value targets, [B, S] (step_gae) or [B, T] (token_gae)
    old_values: torch.Tensor | None = None  # the values the returns were built from, same shape
    value_mask: torch.Tensor | None = None


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=1) - 1


def step_rewards(
    batch: TokenBatch,
    token_penalty: torch.Tensor | None = None,
    process_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward of every step ``[B, S]``: the outcome at the last step, minus each step's summed per-token
    penalty (the KL to the reference, already weighted), plus an optional process reward per step."""
    rows = torch.arange(len(batch))
    rewards = torch.zeros(batch.step_mask.shape)
    rewards[rows, _last_index(batch.step_mask)] += batch.rewards
    if token_penalty is not None:
        penalty = torch.where(batch.completion_mask, token_penalty, 0.0)
        rewards.scatter_add_(1, batch.token_step.clamp(min=0), -penalty)
    if process_rewards is not None:
        rewards += torch.where(batch.step_mask, process_rewards, 0.0)
    return rewards


def token_rewards(
    batch: TokenBatch,
    token_penalty: torch.Tensor | None = None,
    process_rewards: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward of every completion token ``[B, T]``: the outcome at the last token, minus the per-token
    penalty, plus each step's process reward at the step's last token."""
    rows = torch.arange(len(batch))
    rewards = torch.zeros(batch.completion_mask.shape)
    if token_penalty is not None:
        rewards -= torch.where(batch.completion_mask, token_penalty, 0.0)
    rewards[rows, _last_index(batch.completion_mask)] += batch.rewards
    if process_rewards is not None:
        # Step k ends at completion token (step_end_position - first completion position - 1).
        end_tokens = batch.step_end_positions - batch.completion_positions[:, :1] - 1
        rewards.scatter_add_(1, end_tokens.clamp(min=0), torch.where(batch.step_mask, process_rewards, 0.0))
    return rewards


def step_gae_targets(
    batch: TokenBatch,
    values: torch.Tensor,
    gamma: float,
    lam: float,
    token_penalty: torch.Tensor | None = None,
    process_rewards: torch.Tensor | None = None,
) -> Targets:
    """Step-level GAE: ``values`` ``[B, L]`` are read once per step, at ``step_positions`` (V(s_k),
    before step k); each step's advantage is given to all of its tokens."""
    step_values = values.gather(1, batch.step_positions)
    rewards = step_rewards(batch, token_penalty, process_rewards)
    advantages, returns = gae(rewards, step_values, batch.step_mask, gamma, lam)
    per_token = broadcast_to_tokens(advantages, batch.token_step)
    return Targets(per_token, returns, torch.where(batch.step_mask, step_values, 0.0), batch.step_mask)


def token_gae_targets(
    batch: TokenBatch,
    values: torch.Tensor,
    gamma: float,
    lam: float,
    token_penalty: torch.Tensor | None = None,
    process_rewards: torch.Tensor | None = None,
) -> Targets:
    """Token-level GAE: a value before every completion token (read where its logits are)."""
    token_values = values.gather(1, batch.completion_positions)
    rewards = token_rewards(batch, token_penalty, process_rewards)
    advantages, returns = gae(rewards, token_values, batch.completion_mask, gamma, lam)
    old = torch.where(batch.completion_mask, token_values, 0.0)
    return Targets(advantages, returns, old, batch.completion_mask)


def sequence_targets(batch: TokenBatch, sequence_advantages: torch.Tensor) -> Targets:
    """Critic-free estimators (GRPO, RLOO, Lite PPO): one advantage per completion, on all its tokens."""
    per_token = sequence_advantages[:, None].expand_as(batch.completion_mask)
    return Targets(torch.where(batch.completion_mask, per_token, 0.0))
