"""Scoring steps with a critic: one forward pass per solution reads every step's value.

The critic's input is ``format_prompt(tokenizer, question)`` followed by the response text. The value
of step ``t`` is read at the token holding the step's last character: its delimiter for every step
but the last, and the last step's final character (no EOS is appended). Reading each step where
per-prefix scoring would read it makes the two agree exactly (:func:`score_examples` against
:func:`score_prefixes_separately`, the baseline ``bench/critic_scoring.py`` times): causal attention means the forward
pass over the whole response computes, at each step end, what a pass over that prefix alone would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from llmac.data.loading import format_prompt
from llmac.steps import char_ends_to_token_ends, join_steps, step_char_ends, token_char_ends

Response = str | Sequence[str]  # response text, or its clean steps (joined with the delimiter)


@dataclass
class CriticExample:
    """Token ids the critic reads and the positions (in ``input_ids``) where each step ends."""

    input_ids: list[int]
    step_positions: list[int]


def response_text(response: Response, delimiter: str) -> str:
    """The text of a response given as text or as clean step strings."""
    return response if isinstance(response, str) else join_steps(list(response), delimiter)


def encode_example(tokenizer, question: str, response: Response, delimiter: str) -> CriticExample:
    """The critic's input for one solution; raises if the response has no step."""
    text = response_text(response, delimiter)
    char_ends = step_char_ends(text, delimiter)
    if not char_ends:
        raise ValueError(f"response has no step (no visible text): {text!r}")
    prompt_ids = list(tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"])
    response_ids, token_ends = _encode_with_char_ends(tokenizer, text)
    if tokenizer.decode(response_ids, skip_special_tokens=False) != text:
        raise ValueError(
            f"the critic's tokenizer cannot represent this response ({text[:60]!r}...): it is not the "
            "tokenizer the data was written for; train or load a critic whose tokenizer matches"
        )
    ends = char_ends_to_token_ends(token_ends, char_ends)
    return CriticExample(prompt_ids + response_ids, [len(prompt_ids) + e for e in ends])


def _encode_with_char_ends(tokenizer, text: str) -> tuple[list[int], list[int]]:
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [end for _, end in encoded["offset_mapping"]]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    decode = lambda t: tokenizer.decode(list(t), skip_special_tokens=False)  # noqa: E731
    return ids, token_char_ends(ids, decode)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for token-id lists."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def value_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The critic's value logit at every position, shape ``(batch, length)``."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits[..., 0].float()


class _eval_mode:
    """Put a model in eval mode for a block and restore its previous mode (scoring mid-training)."""

    def __init__(self, model) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc_info) -> None:
        self.model.train(self.was_training)


@torch.no_grad()
def score_examples(
    model, examples: Sequence[CriticExample], pad_id: int, batch_size: int = 32, progress: bool = False
) -> list[list[float]]:
    """V in (0, 1) at every step end, one forward pass per example, batched by similar length."""
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    values: list[list[float]] = [[] for _ in examples]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with _eval_mode(model):
        for batch in tqdm(batches, desc="scoring steps", unit="batch", disable=not progress):
            ids, mask = pad_batch([examples[i].input_ids for i in batch], pad_id)
            probs = torch.sigmoid(value_logits(model, ids.to(device), mask.to(device))).cpu()
            for row, i in enumerate(batch):
                values[i] = probs[row, examples[i].step_positions].tolist()
    return values


def score_steps(
    model,
    tokenizer,
    questions: Sequence[str],
    responses: Sequence[Response],
    delimiter: str,
    batch_size: int = 32,
    progress: bool = False,
) -> list[list[float]]:
    """Per-step values of each response to its question (text, or clean step strings)."""
    if len(questions) != len(responses):
        raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
    examples = []
    for i, (question, response) in enumerate(zip(questions, responses, strict=True)):
        try:
            examples.append(encode_example(tokenizer, question, response, delimiter))
        except ValueError as err:
            raise ValueError(f"response {i}: {err}") from None
    return score_examples(model, examples, tokenizer.pad_token_id, batch_size, progress)


@torch.no_grad()
def score_prefixes_separately(
    model, examples: Sequence[CriticExample], pad_id: int, batch_size: int = 32
) -> list[list[float]]:
    """The same values as :func:`score_examples`, one forward pass per step prefix.

    This is how PRMs are often applied (score "question + steps so far", read the last token); it is
    the baseline the single-pass scorer is measured against.
    """
    device = next(model.parameters()).device
    prefixes = [
        (i, t, ex.input_ids[: end + 1])
        for i, ex in enumerate(examples)
        for t, end in enumerate(ex.step_positions)
    ]
    prefixes.sort(key=lambda item: len(item[2]))  # batch similar lengths, as score_examples does
    values = [[0.0] * len(ex.step_positions) for ex in examples]
    with _eval_mode(model):
        for start in range(0, len(prefixes), batch_size):
            chunk = prefixes[start : start + batch_size]
            ids, mask = pad_batch([p for _, _, p in chunk], pad_id)
            probs = torch.sigmoid(value_logits(model, ids.to(device), mask.to(device))).cpu()
            for row, (i, t, prefix) in enumerate(chunk):
                values[i][t] = probs[row, len(prefix) - 1].item()
    return values
