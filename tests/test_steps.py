"""Steps: hand-computed cases, properties (hypothesis), and every solution of real GSM8K data."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmac.steps import (
    char_ends_to_token_ends,
    clean_steps,
    join_steps,
    split_steps,
    spread_over_tokens,
    step_char_ends,
    step_spans,
    step_token_ends,
    token_char_ends,
)

MODEL_SOURCES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


# ------------------------------------------------------------------------------------ hand-computed


@pytest.mark.parametrize(
    ("text", "delimiter", "steps"),
    [
        ("a\nb", "\n", ["a\n", "b"]),
        ("x = 1 + 2", "\n", ["x = 1 + 2"]),  # no delimiter: one step
        ("a\n\nb", "\n", ["a\n\n", "b"]),  # the empty step joins the one before it
        ("a\nb\n", "\n", ["a\n", "b\n"]),
        ("a\nb\n \n\t", "\n", ["a\n", "b\n \n\t"]),  # trailing whitespace joins the last step
        ("\n \na\nb", "\n", ["\n \na\n", "b"]),  # leading blank lines join the first step
        ("line1\nline2\n\nline3", "\n\n", ["line1\nline2\n\n", "line3"]),
        ("a\n\n\n\nb", "\n\n", ["a\n\n\n\n", "b"]),  # two delimiters in a row
        ("a\n\n\nb", "\n\n", ["a\n\n", "\nb"]),  # a lone "\n" after "\n\n" starts the next step
        ("2 + 3 = 5. 5 - 1 = 4. ", ". ", ["2 + 3 = 5. ", "5 - 1 = 4. "]),
        (". . 2 + 3 = 5", ". ", [". . 2 + 3 = 5"]),  # leading delimiters join the first step
        ("==x=y", "=", ["==x=", "y"]),
    ],
)
def test_split_steps_hand_cases(text, delimiter, steps):
    assert split_steps(text, delimiter) == steps
    assert "".join(steps) == text
    assert step_char_ends(text, delimiter) == [sum(len(s) for s in steps[: i + 1]) for i in range(len(steps))]


@pytest.mark.parametrize("text", ["", " ", "\n", "\n\n \n\t"])
def test_text_without_visible_content_has_no_steps(text):
    assert split_steps(text) == []
    assert step_spans(text) == []
    assert clean_steps(text) == []


def test_spans_and_char_ends():
    assert step_spans("ab\ncd\n") == [(0, 3), (3, 6)]
    assert step_char_ends("ab\ncd\n") == [3, 6]
    assert step_char_ends("ab\n\ncd") == [4, 6]


def test_empty_delimiter_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        split_steps("a\nb", "")


def test_clean_and_join_steps():
    assert clean_steps(" a \n\n b\n") == ["a", "b"]
    assert clean_steps("s1\nmore\n\ns2\n\n", "\n\n") == ["s1\nmore", "s2"]
    assert join_steps(["a", "b", "c"]) == "a\nb\nc"
    assert join_steps(["a", "b"], "\n\n") == "a\n\nb"
    assert join_steps(clean_steps("a\nb\nc")) == "a\nb\nc"


def test_char_ends_to_token_ends_hand_cases():
    # tokens cover [0,2) [2,5) [5,9): char end 3 lies in token 1, char end 9 in token 2
    assert char_ends_to_token_ends([2, 5, 9], [3, 9]) == [1, 2]
    # a token "b\nc" holding two step ends: both steps end at it
    assert char_ends_to_token_ends([1, 4], [2, 4]) == [1, 1]
    assert char_ends_to_token_ends([4, 8], [2, 4]) == [0, 0]
    with pytest.raises(ValueError, match="past the tokens"):
        char_ends_to_token_ends([2, 5], [3, 6])


def _char_decode(ids):
    return "".join(chr(i) for i in ids)


def test_token_char_ends_char_level():
    assert token_char_ends([ord(c) for c in "ab\nc"], _char_decode) == [1, 2, 3, 4]
    assert step_token_ends([ord(c) for c in "ab\nc"], _char_decode) == [2, 3]


def _byte_decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_token_char_ends_bytes_of_one_character():
    # "a’b": '’' is three bytes; the character ends at the token holding its third byte.
    ids = list("a’b".encode())
    assert len(ids) == 5
    assert token_char_ends(ids, _byte_decode) == [1, 1, 1, 2, 3]
    # a step whose last character is multi-byte ends at the token that completes it
    ids = list("x\ny’".encode())
    assert step_token_ends(ids, _byte_decode) == [1, 5]


def test_spread_over_tokens_hand_cases():
    assert spread_over_tokens([0.5, -1.0], [1, 4], 6) == [0.5, 0.5, -1.0, -1.0, -1.0, -1.0]  # EOS: last step
    assert spread_over_tokens([2.0], [0], 3) == [2.0, 2.0, 2.0]
    assert spread_over_tokens([], [], 2) == [0.0, 0.0]
    # two steps ending at one token: the token takes the first step's value
    assert spread_over_tokens([1.0, 2.0, 3.0], [0, 0, 2], 3) == [1.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="2 step values for 1 steps"):
        spread_over_tokens([1.0, 2.0], [3], 5)


# ------------------------------------------------------------------------------------- properties

_DELIMITERS = ["\n", "\n\n", ". ", "=", "ab"]
_delimiters = st.sampled_from(_DELIMITERS)
# Texts dense in delimiters, blanks and runs of them: pieces of text glued to delimiters and whitespace.
_texts = st.lists(
    st.one_of(st.sampled_from([*_DELIMITERS, " ", "\t"]), st.text(alphabet="ab7 .\n=+", max_size=4)),
    max_size=15,
).map("".join)


@settings(max_examples=500)
@given(text=_texts, delimiter=_delimiters)
def test_split_steps_properties(text, delimiter):
    steps = split_steps(text, delimiter)
    if not text.strip():
        assert steps == []
        return
    assert "".join(steps) == text
    assert all(step.strip() for step in steps)
    assert all(step.endswith(delimiter) for step in steps[:-1])
    # one step per delimiter-separated piece with visible content (a text of delimiters only: one step)
    pieces_with_content = sum(1 for piece in text.split(delimiter) if piece.strip())
    assert len(steps) == max(pieces_with_content, 1)


@given(text=_texts, delimiter=_delimiters)
def test_step_token_ends_char_level_tokenizer(text, delimiter):
    ids = [ord(c) for c in text]
    assert step_token_ends(ids, _char_decode, delimiter) == [
        end - 1 for end in step_char_ends(text, delimiter)
    ]


def _cut(sequence, cuts):
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(sequence)), len(sequence)]
    return [sequence[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def _chunk_holding(chunks, position):
    """Index of the chunk holding element ``position`` of the concatenated chunks."""
    end = 0
    for i, chunk in enumerate(chunks):
        end += len(chunk)
        if position < end:
            return i
    raise AssertionError(position)


@given(text=_texts, delimiter=_delimiters, cuts=st.sets(st.integers(1, 59)))
def test_step_token_ends_multi_character_tokens(text, delimiter, cuts):
    """Tokens are arbitrary chunks of the text (some spanning a delimiter)."""
    chunks = _cut(text, cuts)
    vocab = sorted(set(chunks))

    def decode(ids):
        return "".join(vocab[i] for i in ids)

    ids = [vocab.index(chunk) for chunk in chunks]
    expected = [_chunk_holding(chunks, end - 1) for end in step_char_ends(text, delimiter)]
    assert step_token_ends(ids, decode, delimiter) == expected


@given(
    text=st.text(alphabet=st.sampled_from(list("a1 \n’é€")), max_size=30),
    cuts=st.sets(st.integers(1, 120)),
)
def test_step_token_ends_byte_tokens_cutting_characters(text, cuts):
    """Tokens are arbitrary chunks of the UTF-8 bytes, cutting multi-byte characters anywhere."""
    data = text.encode()
    chunks = _cut(data, cuts)
    vocab = sorted(set(chunks))

    def decode(ids):
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    ids = [vocab.index(chunk) for chunk in chunks]
    # a step ends at the token holding the last byte of its last character
    expected = [_chunk_holding(chunks, len(text[:end].encode()) - 1) for end in step_char_ends(text)]
    assert step_token_ends(ids, decode) == expected


# ------------------------------------------------------------------------------- real GSM8K text


@pytest.fixture(scope="module")
def gsm8k_texts(gsm8k_dir):
    """Reasoning texts as GSM8K ships them: 7,473 train answers and 2,640 model solutions."""
    with (gsm8k_dir / "train.jsonl").open() as f:
        answers = [json.loads(line)["answer"] for line in f]
    with (gsm8k_dir / "model_solutions.jsonl").open() as f:
        solutions = [json.loads(line)[source]["solution"] for line in f for source in MODEL_SOURCES]
    assert (len(answers), len(solutions)) == (7473, 2640)
    return answers + solutions


def test_gsm8k_steps_are_the_lines(gsm8k_texts):
    for text in gsm8k_texts:
        steps = split_steps(text)
        lines = [line for line in text.split("\n") if line.strip()]
        assert "".join(steps) == text
        assert len(steps) == len(lines)
        assert clean_steps(text) == [line.strip() for line in lines]


def test_gsm8k_blank_lines_join_the_step_before(gsm8k_texts):
    assert sum("\n\n" in text for text in gsm8k_texts) == 4  # train answers with a blank line
    text = next(t for t in gsm8k_texts if t.startswith("Terry will be 4*10"))
    assert split_steps(text) == [
        "Terry will be 4*10=<<4*10=40>>40 years old in 10 years\n\n",
        "Currently, Terry is 40-10 = <<40-10=30>>30 years old.\n",
        "#### 30",
    ]


def _covering_token(offsets, char):
    """The last token whose character span holds ``char`` (byte pieces of one character share a span)."""
    return max(i for i, (start, end) in enumerate(offsets) if start <= char < end)


def _check_step_ends_against_offsets(tokenizer, texts):
    crossing = 0
    for text in texts:
        encoding = tokenizer.encode(text)

        def decode(ids):
            return tokenizer.decode(list(ids))

        assert decode(encoding.ids) == text
        ends = step_token_ends(encoding.ids, decode)
        char_ends = step_char_ends(text)
        assert len(ends) == len(char_ends)
        for token, char_end in zip(ends, char_ends, strict=True):
            assert token == _covering_token(encoding.offsets, char_end - 1)
            crossing += encoding.offsets[token][1] > char_end  # the token runs into the next step
    return crossing


def test_gsm8k_step_token_ends_with_bpe_merging_across_newlines(gsm8k_texts):
    """A BPE with no pre-tokenizer learns tokens like ".\\nThe": step ends fall inside tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.decoder = decoders.Fuse()
    alphabet = sorted({c for text in gsm8k_texts for c in text})
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=alphabet, show_progress=False)
    tokenizer.train_from_iterator(gsm8k_texts[:2000], trainer)
    assert any(".\nThe" in token for token in tokenizer.get_vocab())

    crossing = _check_step_ends_against_offsets(tokenizer, gsm8k_texts)
    assert crossing > 1000  # many steps end inside a token that also starts the next step


def test_gsm8k_step_token_ends_with_byte_level_bpe(gsm8k_texts):
    """Byte-level BPE splits '’', '€', '½' into byte tokens; texts holding them take the exact path."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(gsm8k_texts[:2000], trainer)
    non_ascii = [text for text in gsm8k_texts if not text.isascii()]
    assert len(non_ascii) == 514 + 85
    _check_step_ends_against_offsets(tokenizer, non_ascii)
