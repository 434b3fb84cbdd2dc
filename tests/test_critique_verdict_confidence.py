"""Soft verdicts: the critic's odds of "correct" against "wrong" where its final verdict starts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from llmac.critique.format import get_critique_format
from llmac.critique.verdict_confidence import verdict_choice, verdict_probabilities


class CharTokenizer:
    """One token per character (the tiny CPU model's kind)."""

    pad_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


class MergingTokenizer(CharTokenizer):
    """Like a BPE tokenizer: a space merges into the word after it (" r" is one token, id 1000 + ord)."""

    def __call__(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            if text[i] == " " and i + 1 < len(text):
                ids.append(1000 + ord(text[i + 1]))
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}


class OddsModel(torch.nn.Module):
    """Logits at the last position: log(odds) for 'r' when the text's last real token is ':' or ' ',
    checking that left padding comes with the right positions."""

    def forward(self, input_ids, attention_mask, position_ids):
        lengths = attention_mask.sum(-1)
        assert torch.equal(position_ids[:, -1], lengths - 1)  # the last token sits at its true position
        logits = torch.zeros(*input_ids.shape, 2000)
        logits[:, -1, ord("r")] = torch.log(torch.tensor(3.0))  # P(r) = 3/4 against w
        logits[:, -1, 1000 + ord("r")] = torch.log(torch.tensor(1 / 3))  # merged " r": 1/4
        return SimpleNamespace(logits=logits)


def test_the_verdict_words_part_after_the_shared_space_or_as_merged_tokens():
    context, right, wrong = verdict_choice(CharTokenizer(), "x\nAnswer:", (" r", " w"))
    assert context == [ord(c) for c in "x\nAnswer: "] and (right, wrong) == (ord("r"), ord("w"))
    context, right, wrong = verdict_choice(MergingTokenizer(), "x\nAnswer:", (" r", " w"))
    assert len(context) == len("x\nAnswer:") and (right, wrong) == (1000 + ord("r"), 1000 + ord("w"))
    with pytest.raises(ValueError, match="tokenize the same"):
        verdict_choice(CharTokenizer(), "x", (" r", " r"))


@pytest.mark.parametrize(("tokenizer", "expected"), [(CharTokenizer(), 0.75), (MergingTokenizer(), 0.25)])
def test_probabilities_of_compact_critiques(tokenizer, expected):
    compact = get_critique_format("compact")
    critiques = ["1 + 2 = 3 r\nAnswer: w", "truncated 1 + 2 =", "1 + 2 = 3 r\n3 + 4 = 7 r\nAnswer: r\n"]
    prompts = ["q1\n1 + 2 = 3\n\n", "q2\n\n", "a longer prompt\n1 + 2 = 3\n3 + 4 = 7\n\n"]
    probabilities = verdict_probabilities(OddsModel(), tokenizer, compact, prompts, critiques, batch_size=2)
    assert probabilities[1] is None  # no final verdict
    assert probabilities[0] == pytest.approx(expected) and probabilities[2] == pytest.approx(expected)


def test_the_verbose_format_cuts_before_its_last_final_verdict():
    verbose = get_critique_format("verbose")
    text = "Step 1: ...\nCorrectness of the final answer: Wrong\nCorrectness of the final answer: **Correct**"
    assert verbose.final_verdict_prefix(text) == text[: text.rindex(":") + 1]
    assert verbose.final_verdict_prefix("Correctness of the final answer: maybe") is None
    assert verbose.verdict_words == (" Correct", " Wrong")
