"""The forward passes an RL pipeline runs on a :class:`~llmac.rl.batch.TokenBatch`: completion log-probs
(and entropy) of the actor, values of its value model, reference log-probs and process rewards.

Each pass runs once per :func:`~llmac.rl.batch.length_groups` group of ``micro_batch_size`` rows: a
batch padded to its longest row spends much of its compute on padding when response lengths vary. The
results come back in the batch's row order, so the losses see the batch as one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmac.losses import entropy_from_logits, masked_mean, token_logprobs
from llmac.rl.batch import TokenBatch, in_row_order, length_groups


class PolicyAndValue(torch.nn.Module):
    """The actor and its value model as one module, so one DeepSpeed engine (one optimizer) trains both."""

    def __init__(self, policy: torch.nn.Module, value: torch.nn.Module | None) -> None:
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(self, input_ids, attention_mask, with_value: bool = True, with_policy: bool = True):
        logits = (
            self.policy(input_ids=input_ids, attention_mask=attention_mask).logits if with_policy else None
        )
        values = None
        if with_value and self.value is not None:
            values = self.value(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1)
        return logits, values


@dataclass
class TokenOutputs:
    """What scoring and the updates read from the models, in the batch's row order."""

    logprobs: torch.Tensor | None  # [B, T] completion tokens' log-probs at the sampling temperature
    entropy: torch.Tensor | None  # [B, T] the policy's entropy at each completion token
    values: torch.Tensor | None  # [B, L] the value model's output (activation applied) at every position


def completion_logits(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """The logits ``[B, T, V]`` that predict each completion token."""
    index = batch.completion_positions[..., None].expand(-1, -1, logits.shape[-1])
    return logits[:, :-1].float().gather(1, index)


def engine_logprob_gap(
    trainer_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, mask: torch.Tensor
) -> dict[str, float]:
    """Mean and max |trainer - engine| log-prob of the sampled tokens, before any update.

    The engine samples at the trainer's weights (synced after every update), so the two must match;
    a gap means a broken sync or a precision loss (or, under async rollouts, the sampler's staleness).
    """
    gap = (trainer_logprobs - engine_logprobs).abs()
    return {
        "engine_logprob_gap": masked_mean(gap, mask).item(),
        "engine_logprob_gap_max": gap[mask].max().item(),
    }


# Mean and max engine_logprob_gap when the engine's precision alone differs from a float32 trainer's:
# vLLM on the tiny warm actor, 1458 sampled tokens. Larger models drift further.
PRECISION_GAP = {torch.bfloat16: (6e-3, 0.11), torch.float16: (7e-4, 9e-3)}


def precision_mismatch(trainer_dtype: torch.dtype, engine_dtype: torch.dtype) -> str | None:
    """One line naming both dtypes and the engine_logprob_gap their difference alone brings; None if equal."""
    if trainer_dtype == engine_dtype:
        return None
    coarser = max(trainer_dtype, engine_dtype, key=lambda dtype: torch.finfo(dtype).eps)
    mean, peak = PRECISION_GAP.get(coarser, (float("nan"), float("nan")))
    return (
        f"the rollout engine computes in {dtype_name(engine_dtype)} and the trainer in "
        f"{dtype_name(trainer_dtype)}: expect an engine_logprob_gap of ~{mean:.0e} (mean) and up to "
        f"~{peak:.0e} from precision alone ({dtype_name(coarser)} against float32 on the tiny model; more "
        "on larger ones), not from a broken sync"
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ForwardPasses:
    """Length-grouped forward passes at one sampling temperature and value activation."""

    micro_batch_size: int
    temperature: float = 1.0
    value_activation: str = "sigmoid"  # or "identity"

    def logprobs(self, logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
        """Log-probs ``[B, T]`` of the completion tokens under the sampling temperature."""
        shifted = token_logprobs(logits[:, :-1].float(), batch.input_ids[:, 1:], self.temperature)
        return shifted.gather(1, batch.completion_positions)

    def values(self, value_logits: torch.Tensor) -> torch.Tensor:
        value_logits = value_logits.float()
        return torch.sigmoid(value_logits) if self.value_activation == "sigmoid" else value_logits

    def outputs(
        self,
        model: torch.nn.Module,
        batch: TokenBatch,
        with_value: bool,
        with_policy: bool = True,
        entropy_grad: bool | None = None,
    ) -> TokenOutputs:
        """Log-probs, entropy (if ``entropy_grad`` is not None; with a gradient if True) and values of a
        :class:`PolicyAndValue`."""
        rows, logprobs, entropy, values = [], [], [], []
        width = batch.input_ids.shape[1]
        for group_rows, group in length_groups(batch, self.micro_batch_size):
            logits, value = model(input_ids=group.input_ids, attention_mask=group.attention_mask,
                                  with_value=with_value, with_policy=with_policy)  # fmt: skip
            rows.append(group_rows)
            if logits is not None:
                logprobs.append(self.logprobs(logits, group))
                if entropy_grad is not None:
                    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                        entropy.append(entropy_from_logits(completion_logits(logits, group)))
            if value is not None:
                values.append(torch.nn.functional.pad(self.values(value), (0, width - value.shape[1])))
        return TokenOutputs(
            *(in_row_order(rows, parts) if parts else None for parts in (logprobs, entropy, values))
        )

    def reference_logprobs(self, reference: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
        """Completion log-probs ``[B, T]`` under a frozen causal LM."""
        return self._per_group(reference, batch, lambda logits, group: self.logprobs(logits, group))

    def process_rewards(self, process_reward_model: torch.nn.Module, batch: TokenBatch) -> torch.Tensor:
        """A step critic's scores ``[B, S]`` (sigmoid of its logit), read at each step's last token."""
        return self._per_group(
            process_reward_model,
            batch,
            lambda logits, group: torch.sigmoid(logits.squeeze(-1).float()).gather(
                1, group.step_end_positions
            ),
        )

    def _per_group(
        self,
        model: torch.nn.Module,
        batch: TokenBatch,
        read: Callable[[torch.Tensor, TokenBatch], torch.Tensor],
    ) -> torch.Tensor:
        rows, parts = [], []
        for group_rows, group in length_groups(batch, self.micro_batch_size):
            logits = model(input_ids=group.input_ids, attention_mask=group.attention_mask).logits
            rows.append(group_rows)
            parts.append(read(logits, group))
        return in_row_order(rows, parts)
