"""From a batch of rollouts and the models' outputs to what a policy-gradient update regresses on:
advantages per token and value targets (per step for ``step_gae``, per token for ``token_gae``).
Pure functions of tensors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from llmac.advantages import broadcast_to_tokens, gae
from llmac.rl.batch import TokenBatch


@dataclass
class Targets:
    advantages: torch.Tensor  # [B, T], 0 on padding
    returns: torch.Tensor | None = None  # value targets, [B, S] (step_gae) or [B, T] (token_gae)
    old_values: torch.Tensor | None = None  # the values the returns were built from, same shape
    value_mask: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Targets:
        """The targets of the rows ``index``."""
        return Targets(*(None if t is None else t[index] for t in vars(self).values()))


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


def gae_targets(
    batch: TokenBatch,
    values: torch.Tensor,
    gamma: float,
    lam: float,
    token_penalty: torch.Tensor | None = None,
    process_rewards: torch.Tensor | None = None,
    *,
    per_step: bool = True,
) -> Targets:
    """GAE over the value model's ``values`` ``[B, L]`` (every position).

    ``per_step`` (step-level GAE): values are read once per step, at ``step_positions`` (V(s_k), before
    step k), and each step's advantage is given to all of its tokens. Otherwise (token-level GAE): a
    value before every completion token, read where its logits are.
    """
    if per_step:
        positions, mask = batch.step_positions, batch.step_mask
        rewards = step_rewards(batch, token_penalty, process_rewards)
    else:
        positions, mask = batch.completion_positions, batch.completion_mask
        rewards = token_rewards(batch, token_penalty, process_rewards)
    old_values = values.gather(1, positions)
    advantages, returns = gae(rewards, old_values, mask, gamma, lam)
    if per_step:
        advantages = broadcast_to_tokens(advantages, batch.token_step)
    return Targets(advantages, returns, torch.where(mask, old_values, 0.0), mask)


step_gae_targets = partial(gae_targets, per_step=True)
token_gae_targets = partial(gae_targets, per_step=False)


def sequence_targets(batch: TokenBatch, sequence_advantages: torch.Tensor) -> Targets:
    """Critic-free estimators (GRPO, RLOO, Lite PPO): one advantage per completion, on all its tokens."""
    per_token = sequence_advantages[:, None].expand_as(batch.completion_mask)
    return Targets(torch.where(batch.completion_mask, per_token, 0.0))
