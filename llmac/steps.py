"""Steps: the unit every llmac pipeline shares.

A response is split into steps at a delimiter (default ``"\\n"``). Steps are spans of the text whose
concatenation is exactly the response: each step keeps its delimiter, so nothing is lost and
``"".join(split_steps(text)) == text``. Runs of delimiters and whitespace-only pieces belong to the
step before them, so a step always has visible content.

Token side: a step ends at the token that contains its last character. Critics read their value at
that token, and advantages are broadcast over the tokens between two step ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

DEFAULT_DELIMITER = "\n"


def step_spans(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the steps of ``text``.

    Every character belongs to exactly one span, except that a text with no visible content has no
    steps. Leading blank lines join the first step; trailing whitespace joins the last one.
    """
    if not delimiter:
        raise ValueError("step delimiter must be a non-empty string")
    if not text.strip():
        return []
    spans: list[tuple[int, int]] = []
    start = pos = 0
    while (idx := text.find(delimiter, pos)) != -1:
        end = idx + len(delimiter)
        if text[pos:idx].strip():  # the piece since the last delimiter, not the delimiters before it
            spans.append((start, end))
            start = end
        elif spans:  # an empty step: its delimiter joins the previous step
            spans[-1] = (spans[-1][0], end)
            start = end
        pos = end
    if start < len(text):
        if text[start:].strip() or not spans:
            spans.append((start, len(text)))
        else:
            spans[-1] = (spans[-1][0], len(text))
    return spans


def split_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """Split ``text`` into steps; ``"".join(split_steps(t)) == t`` for any ``t`` with visible content."""
    return [text[s:e] for s, e in step_spans(text, delimiter)]


def clean_steps(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[str]:
    """Steps without their delimiters and surrounding whitespace (the Math-Shepherd/PRM layout)."""
    return [step.strip() for step in split_steps(text, delimiter)]


def join_steps(steps: Sequence[str], delimiter: str = DEFAULT_DELIMITER) -> str:
    """Inverse of :func:`clean_steps`: the response text for a list of step strings."""
    return delimiter.join(steps)


def step_char_ends(text: str, delimiter: str = DEFAULT_DELIMITER) -> list[int]:
    """Exclusive character offset at which each step of ``text`` ends."""
    return [end for _, end in step_spans(text, delimiter)]


def char_ends_to_token_ends(token_char_ends: Sequence[int], char_ends: Sequence[int]) -> list[int]:
    """Map step character ends to the index of the token holding each step's last character.

    ``token_char_ends[i]`` is the exclusive character offset at which token ``i`` ends (a
    non-decreasing sequence). A step ending inside a token ends at that token, so two steps can end
    at the same token when one token spans a delimiter.
    """
    ends: list[int] = []
    tok = 0
    for end in char_ends:
        while tok < len(token_char_ends) and token_char_ends[tok] < end:
            tok += 1
        if tok == len(token_char_ends):
            raise ValueError(f"step ends at character {end}, past the tokens' last character")
        ends.append(tok)
    return ends


def token_char_ends(token_ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> list[int]:
    """Exclusive character offset at which each token ends in ``decode(token_ids)``.

    Decoding tokens one by one is exact for most tokenizers; where it is not (byte-level pieces of
    one multi-byte character), prefixes are decoded instead, which is exact but quadratic. A prefix
    ending inside a character decodes it as a replacement character, which does not count: a
    character ends at the token that completes it.
    """
    pieces = [decode([t]) for t in token_ids]
    full = decode(token_ids)
    if "".join(pieces) == full:
        ends, total = [], 0
        for piece in pieces:
            total += len(piece)
            ends.append(total)
        return ends
    return [_common_prefix_length(decode(token_ids[: i + 1]), full) for i in range(len(token_ids))]


def _common_prefix_length(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def step_token_ends(
    token_ids: Sequence[int],
    decode: Callable[[Sequence[int]], str],
    delimiter: str = DEFAULT_DELIMITER,
) -> list[int]:
    """Index of the last token of every step of the text the tokens decode to."""
    text = decode(token_ids)
    return char_ends_to_token_ends(token_char_ends(token_ids, decode), step_char_ends(text, delimiter))


def spread_over_tokens(
    step_values: Sequence[float], step_ends: Sequence[int], num_tokens: int
) -> list[float]:
    """Give every token the value of the step it belongs to.

    Token ``i`` belongs to the first step whose end index is ``>= i``. Tokens after the last step end
    (an EOS, which decoded text does not show) belong to the last step: ending the response is part
    of taking it. With no steps every token gets 0.
    """
    if len(step_values) != len(step_ends):
        raise ValueError(f"{len(step_values)} step values for {len(step_ends)} steps")
    out = [0.0] * num_tokens
    start = 0
    for value, end in zip(step_values, step_ends, strict=True):
        for i in range(start, min(end + 1, num_tokens)):
            out[i] = float(value)
        start = max(start, end + 1)
    for i in range(start, num_tokens if step_values else 0):
        out[i] = float(step_values[-1])
    return out
