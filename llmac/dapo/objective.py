"""DAPO's actor loss: regress each candidate step's log-ratio to the reference on its advantage / beta.

``L = 1/2 (A / beta - (log pi(a|s) - log pi_ref(a|s)))^2``, log-probs summed over the step's tokens.
At the optimum ``log pi(a|s) / pi_ref(a|s) = A / beta``: a larger beta keeps the policy nearer the
reference. Pure tensor functions.
"""

from __future__ import annotations

import torch


def step_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log pi(a|s)`` of each row ``[B]``: its step's token log-probs ``[B, T]`` summed where ``mask``."""
    return torch.where(mask, token_logprobs, 0.0).sum(dim=1)


def dapo_loss(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, advantages: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-candidate loss ``[B]`` from summed step log-probs ``[B]`` under pi and pi_ref, and advantages."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    log_ratio = logprobs - ref_logprobs
    return 0.5 * (advantages / beta - log_ratio) ** 2
