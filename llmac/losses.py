"""Losses and per-token quantities shared by the RL trainers.

Conventions: per-token tensors are ``[B, T]``; masks are bool tensors of the same shape, True on the
tokens that count. Masking is done with ``torch.where`` rather than multiplication, so whatever sits
at padded positions (even NaN or inf) never reaches a result or a gradient through the masked path.
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token", "sequence")


def zeros_where_not(mask: Tensor, x: Tensor) -> Tensor:
    """``x`` where ``mask`` is True, 0 elsewhere (whatever ``x`` holds there, NaN included)."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x`` over the entries where ``mask`` is True (over ``dim``, or everything if None)."""
    masked = zeros_where_not(mask, x)
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Mean of ``x`` over the masked entries; a slice with no masked entry gives 0, not NaN."""
    mask = torch.broadcast_to(mask, x.shape)
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def token_logprobs(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / temperature)`` at ``labels``: ``[B, T, V], [B, T] -> [B, T]``.

    Negative labels (the ``-100`` padding convention) are read at index 0; the caller masks them.
    Computed as ``logit[label] - logsumexp(logits)`` in float32, so no ``[B, T, V]`` log-softmax
    copy is kept.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    index = labels.clamp(min=0).unsqueeze(-1)
    picked = logits.gather(-1, index).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` over the last dim: ``[B, T, V] -> [B, T]``.

    ``-inf`` logits (banned tokens) contribute 0 instead of ``0 * -inf = NaN``.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.special.entr(probs).sum(dim=-1)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(π‖π_ref) from tokens sampled from π.

    ``k1 = logp - ref`` (unbiased, can be negative); ``k2 = ½(logp - ref)²``;
    ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman's estimator: unbiased and always >= 0).
    """
    if kind == "k1":
        return logprobs - ref_logprobs
    if kind == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if kind == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str = "token",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    - ``"token"``: ``Σ_i Σ_t ℓ_it / Σ_i |o_i|`` (ByteDance DAPO token-level loss); the denominator is
      ``num_tokens`` when given, so the minibatches of one gradient-accumulated batch all divide by
      the whole batch's token count, else the number of masked tokens here.
    - ``"sequence"``: mean over rows of each row's masked mean (original GRPO); rows with no token
      are skipped. The row count is ``num_sequences`` when given, else the non-empty rows here.

    An empty mask gives 0.
    """
    if mode == "token":
        denominator = mask.sum() if num_tokens is None else torch.tensor(float(num_tokens))
        return masked_sum(loss, mask) / denominator.to(loss).clamp(min=1e-8)
    if mode == "sequence":
        row_means = masked_mean(loss, mask, dim=-1)
        nonempty = mask.any(dim=-1)
        denominator = nonempty.sum() if num_sequences is None else torch.tensor(float(num_sequences))
        return masked_sum(row_means, nonempty) / denominator.to(loss).clamp(min=1e-8)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate: ``ℓ = -min(ρA, clip(ρ, 1 - clip_low, 1 + clip_high)·A)``, ``ρ = exp(logp - old)``.

    ``clip_high > clip_low`` is ByteDance DAPO's clip-higher (0.2 / 0.28). Returns the aggregated
    loss and detached stats (masked means over tokens): ``clip_fraction`` (tokens where the clipped
    term won the min), ``approx_kl`` (k3 between old and new policy) and ``ratio`` (mean ρ).
    """
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    # Zero the log-ratio at padding before exp: a padded old logprob must not overflow to inf there.
    log_ratio = zeros_where_not(mask, logprobs - old_logprobs)
    ratio = torch.exp(log_ratio)
    advantages = zeros_where_not(mask, advantages)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    loss = aggregate(per_token, mask, aggregation, num_tokens=num_tokens, num_sequences=num_sequences)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped < unclipped).float(), mask),
            # k3(new -> old) written in the log-ratio: exp(-x) + x - 1 with x = logp - old.
            "approx_kl": masked_mean(kl_penalty(log_ratio, torch.zeros_like(log_ratio), "k3"), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None = 0.2,
    aggregation: str = "token",
    num_tokens: float | None = None,
    num_sequences: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss ``½·max((v - R)², (clip(v, old - ε, old + ε) - R)²)`` per position.

    With ``clip_range=None`` it is plain ``½(v - R)²``. Stats (detached): ``value_clip_fraction``
    (positions where the clipped error was the larger one) and ``value_error`` (masked mean (v - R)²).
    """
    error = (values - returns) ** 2
    if clip_range is None:
        per_position = error
        clip_chosen = torch.zeros_like(error, dtype=torch.bool)
    else:
        if clip_range < 0:
            raise ValueError(f"clip_range must be >= 0 or None, got {clip_range}")
        clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        clipped_error = (clipped_values - returns) ** 2
        per_position = torch.maximum(error, clipped_error)
        clip_chosen = clipped_error > error
    loss = aggregate(
        0.5 * per_position, mask, aggregation, num_tokens=num_tokens, num_sequences=num_sequences
    )
    with torch.no_grad():
        stats = {
            "value_clip_fraction": masked_mean(clip_chosen.float(), mask),
            "value_error": masked_mean(error, mask),
        }
    return loss, stats


@torch.no_grad()
def explained_variance(predicted: Tensor, target: Tensor, mask: Tensor) -> float:
    """``1 - Var(target - predicted) / Var(target)`` over the masked entries.

    1 is a perfect prediction, 0 is no better than predicting the mean, negative is worse. Returns 0.0
    when ``Var(target)`` is 0 (or nothing is masked), so logs never show NaN.
    """
    predicted, target = predicted.float(), target.float()
    target_mean = masked_mean(target, mask)
    target_var = masked_mean((target - target_mean) ** 2, mask)
    # A constant target can leave a rounding-level variance; treat anything below float32 resolution
    # (relative to the target's second moment) as zero.
    if target_var.item() <= torch.finfo(torch.float32).eps * masked_mean(target**2, mask).item():
        return 0.0
    residual = target - predicted
    residual_var = masked_mean((residual - masked_mean(residual, mask)) ** 2, mask)
    return float(1.0 - residual_var / target_var)
