"""Verified completions (:class:`Sample`) and their padded tensors (:class:`TokenBatch`), which every
online pipeline scores and trains on.

Positions in a :class:`TokenBatch` follow the model's own shift: index ``j`` of a per-position tensor
describes the token at position ``j + 1`` (the logits at ``j`` predict it, and the hidden state at ``j``
has seen everything before it, which is where the value of the state before that token is read).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch

from llmac.steps import spread_over_tokens


@dataclass
class Sample:
    """One verified completion, with what the trainer needs of its prompt."""

    prompt_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    step_ends: list[int]
    text: str
    finish_reason: str
    reward: float  # the verifier's outcome reward, before any shaping
    logprobs: list[float]  # the engine's log-probs of token_ids (to check it runs the trainer's weights)


def has_signal(group: Sequence[Sample]) -> bool:
    """Whether a group's rewards differ (dynamic sampling keeps only such groups)."""
    return len({s.reward for s in group}) > 1


def token_steps(sample: Sample) -> tuple[list[int], list[int]]:
    """The step ends of a completion and the step each of its tokens belongs to.

    A completion whose text has no step (it decodes to nothing, e.g. a lone EOS) is one step.
    """
    n = len(sample.token_ids)
    ends = sample.step_ends or [n - 1]
    steps = spread_over_tokens(list(range(len(ends))), ends, n)
    return ends, [int(s) for s in steps]


@dataclass
class TokenBatch:
    """Padded tensors of a list of samples: prompt + completion per row, right-padded.

    Per-token tensors ``[B, T]`` are in the completion frame (token ``t`` of each completion, padded to
    the longest); ``completion_positions`` maps them into the model's shifted frame. Per-step tensors
    ``[B, S]`` hold absolute positions in ``input_ids``.
    """

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    completion_positions: torch.Tensor  # [B, T] long: shifted-frame index of completion token t
    completion_mask: torch.Tensor  # [B, T] bool
    token_step: torch.Tensor  # [B, T] long: step of completion token t, -1 on padding
    step_positions: torch.Tensor  # [B, S] long: where V(s_k), the value before step k, is read
    step_end_positions: torch.Tensor  # [B, S] long: step k's last token (where a step critic reads it)
    step_mask: torch.Tensor  # [B, S] bool
    rewards: torch.Tensor  # [B] outcome rewards (after shaping)
    engine_logprobs: torch.Tensor  # [B, T] the rollout engine's log-probs of the completion tokens

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> TokenBatch:
        return TokenBatch(**{name: value[index] for name, value in vars(self).items()})


def length_groups(batch: TokenBatch, size: int) -> Iterator[tuple[torch.Tensor, TokenBatch]]:
    """``batch``'s rows sorted by length, in groups of at most ``size``, each cut to its longest row.

    Yields ``(rows, group)``: the rows' indices in ``batch`` and their sub-batch. Positions stay valid
    (rows are right-padded, so cutting only drops padding), and per-token tensors keep ``batch``'s width.
    """
    lengths = batch.attention_mask.sum(1)
    for rows in torch.argsort(lengths, stable=True).split(size):
        group = batch.select(rows)
        longest = int(lengths[rows].max())
        yield (
            rows,
            replace(
                group,
                input_ids=group.input_ids[:, :longest],
                attention_mask=group.attention_mask[:, :longest],
            ),
        )


def in_row_order(rows: Sequence[torch.Tensor], parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-group results (``parts[i]`` for the rows ``rows[i]``) concatenated back in the batch's order."""
    order = torch.cat(list(rows))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return torch.cat(list(parts))[inverse]


def build_token_batch(samples: Sequence[Sample], rewards: Sequence[float], pad_id: int) -> TokenBatch:
    """Pad ``samples`` into a :class:`TokenBatch`; ``rewards`` are their (shaped) outcome rewards."""
    if not samples:
        raise ValueError("no samples to build a batch from")
    rows = [s.prompt_ids + s.token_ids for s in samples]
    b, length = len(samples), max(len(r) for r in rows)
    width = max(len(s.token_ids) for s in samples)
    num_steps = max(len(token_steps(s)[0]) for s in samples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((b, length), dtype=torch.long)
    completion_positions = torch.zeros((b, width), dtype=torch.long)
    completion_mask = torch.zeros((b, width), dtype=torch.bool)
    token_step = torch.full((b, width), -1, dtype=torch.long)
    step_positions = torch.zeros((b, num_steps), dtype=torch.long)
    step_end_positions = torch.zeros((b, num_steps), dtype=torch.long)
    step_mask = torch.zeros((b, num_steps), dtype=torch.bool)
    engine_logprobs = torch.zeros((b, width))
    for i, (sample, row) in enumerate(zip(samples, rows, strict=True)):
        p, n = len(sample.prompt_ids), len(sample.token_ids)
        if n == 0:
            raise ValueError(f"sample {i} has an empty completion; engines always return at least one token")
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        completion_positions[i, :n] = torch.arange(p - 1, p - 1 + n)
        completion_mask[i, :n] = True
        engine_logprobs[i, :n] = torch.tensor(sample.logprobs, dtype=torch.float32)
        ends, steps = token_steps(sample)
        token_step[i, :n] = torch.tensor(steps)
        # V(s_0) is read at the prompt's last token, V(s_k) at the last token of step k - 1.
        step_positions[i, : len(ends)] = torch.tensor([p - 1] + [p + e for e in ends[:-1]])
        step_end_positions[i, : len(ends)] = torch.tensor([p + e for e in ends])
        step_mask[i, : len(ends)] = True
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        completion_positions=completion_positions,
        completion_mask=completion_mask,
        token_step=token_step,
        step_positions=step_positions,
        step_end_positions=step_end_positions,
        step_mask=step_mask,
        rewards=torch.tensor(list(rewards), dtype=torch.float32),
        engine_logprobs=engine_logprobs,
    )
