"""Batching sequences by tokens: each forward pass gets about the same work, whatever the row lengths."""

from __future__ import annotations

from collections.abc import Sequence


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of similar length, each at most ``max_tokens`` once padded.

    Sequences are taken shortest first; a batch's padded size is its row count times its longest
    length. A sequence longer than ``max_tokens`` gets a batch of its own.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        grown = max(width, lengths[index])
        if current and grown * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, grown = [], lengths[index]
        current.append(index)
        width = grown
    if current:
        batches.append(current)
    return batches


def padded_tokens(lengths: Sequence[int], batches: list[list[int]]) -> int:
    """Tokens the forward passes over ``batches`` compute, padding included."""
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
