"""Soft verdicts: how sure the critic is of its final verdict, read from its next-token odds.

A binary verdict ties most of a problem's solutions (a critic accepts most right answers and some
wrong ones), so best-of-N by verdict alone falls back to the first accepted sample. The critic's
probability of writing the "correct" word rather than the "wrong" one where its final verdict
starts (teacher-forced on its own critique) ranks the solutions instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llmac.critique.format import CritiqueFormat


def verdict_choice(tokenizer, context: str, words: tuple[str, str]) -> tuple[list[int], int, int]:
    """The token ids before the two verdict words part, and the first token of each where they do.

    Tokenizing ``context + word`` for both words and splitting at their first difference works for
    any tokenizer: a character-level one shares the space, a BPE one merges it into the word.
    """
    right, wrong = (tokenizer(context + word, add_special_tokens=False)["input_ids"] for word in words)
    split = next((k for k, (a, b) in enumerate(zip(right, wrong, strict=False)) if a != b), None)
    if split is None:
        raise ValueError(f"the verdict words {words!r} tokenize the same: no soft verdict")
    return right[:split], right[split], wrong[split]


@torch.no_grad()
def verdict_probabilities(
    model,
    tokenizer,
    critique_format: CritiqueFormat,
    prompts: Sequence[str],
    critiques: Sequence[str],
    batch_size: int = 32,
) -> list[float | None]:
    """P(correct) of each critique's final verdict against the wrong word (None: no final verdict).

    ``prompts`` are the critic's requests as it saw them (chat template applied).
    """
    if critique_format.verdict_words is None:
        return [None] * len(critiques)
    found = []
    for index, (prompt, critique) in enumerate(zip(prompts, critiques, strict=True)):
        prefix = critique_format.final_verdict_prefix(critique)
        if prefix is not None:
            found.append((index, *verdict_choice(tokenizer, prompt + prefix, critique_format.verdict_words)))
    probabilities: list[float | None] = [None] * len(critiques)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(found), batch_size):
        batch = found[start : start + batch_size]
        width = max(len(ids) for _, ids, _, _ in batch)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids, _, _ in batch])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids, _, _ in batch])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
        pairs = torch.stack([logits[row, [right, wrong]] for row, (_, _, right, wrong) in enumerate(batch)])
        for (index, *_), p in zip(batch, pairs.softmax(-1)[:, 0].tolist(), strict=True):
            probabilities[index] = p
    return probabilities
