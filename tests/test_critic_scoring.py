"""The step critic: single-pass scoring against per-prefix scoring, step positions, saving and loading."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForTokenClassification

from llmac.critic.model import (
    build_tiny_critic,
    critic_delimiter,
    init_critic,
    load_critic,
    load_critic_tokenizer,
)
from llmac.critic.scoring import encode_example, score_examples, score_prefixes_separately, score_steps
from llmac.data import format_prompt
from llmac.models import TinyModelConfig, build_tiny_model, load_actor
from llmac.steps import clean_steps


def _randomize_head(model, seed: int) -> None:
    """A non-zero value head: logits then vary from token to token, so equal values mean something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = model.score.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) * 2 / weight.shape[1] ** 0.5)
        model.score.bias.fill_(0.3)


def _max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(v) for v in a] == [len(v) for v in b]
    return max(abs(x - y) for va, vb in zip(a, b, strict=True) for x, y in zip(va, vb, strict=True))


@pytest.fixture(scope="module")
def tokenizer(tiny_actor_dir):
    return load_critic_tokenizer(tiny_actor_dir)


@pytest.fixture(scope="module")
def critic(tiny_actor_dir):
    model = init_critic(tiny_actor_dir)
    _randomize_head(model, seed=0)
    return model


@pytest.fixture(scope="module")
def rows(arithmetic_rows):
    return arithmetic_rows.select(range(40))


def _prefix_texts(text: str, delimiter: str) -> list[str]:
    """Each step's prefix of a response text, cut by hand: through the delimiter that ends the step (a blank
    line after a step belongs to it; a leading one to the first step), the whole text for the last step."""
    pieces = text.split(delimiter)
    prefixes: list[str] = []
    consumed = ""
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        consumed += piece if last else piece + delimiter
        if piece.strip():
            prefixes.append(consumed)
        elif prefixes and not last:
            prefixes[-1] = consumed
    return prefixes


@torch.no_grad()
def _score_prefix_texts(critic, tokenizer, question: str, prefixes: list[str]) -> list[float]:
    """The independent reference: each prefix's text tokenized on its own, one unpadded forward pass
    each, the value read at its last token."""
    prompt_ids = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    values = []
    for prefix in prefixes:
        ids = list(prompt_ids) + tokenizer(prefix, add_special_tokens=False)["input_ids"]
        logit = critic(input_ids=torch.tensor([ids])).logits[0, -1, 0]
        values.append(torch.sigmoid(logit.float()).item())
    return values


@pytest.fixture(scope="module")
def layouts(rows) -> tuple[list[str], list[str]]:
    """Questions and responses, with layouts beyond the reference one in the first three."""
    responses = list(rows["solution"])
    responses[0] = responses[0].replace("\n", "\n\n", 1)  # a blank line
    responses[1] += "\n"  # a trailing delimiter
    responses[2] = "\n" + responses[2]  # a leading blank line
    return list(rows["question"]), responses


@pytest.fixture(scope="module")
def prefix_text_values(critic, tokenizer, layouts) -> list[list[float]]:
    questions, responses = layouts
    critic.eval()  # as scoring runs it (no dropout)
    return [
        _score_prefix_texts(critic, tokenizer, q, _prefix_texts(r, "\n"))
        for q, r in zip(questions, responses, strict=True)
    ]


def test_prefix_cutter_by_hand():
    assert _prefix_texts("a\n\nb", "\n") == ["a\n\n", "a\n\nb"]
    assert _prefix_texts("a\nb\n", "\n") == ["a\n", "a\nb\n"]
    assert _prefix_texts("\na\nb", "\n") == ["\na\n", "\na\nb"]
    assert _prefix_texts("a\n\nb\n\nc", "\n\n") == ["a\n\n", "a\n\nb\n\n", "a\n\nb\n\nc"]


def test_single_pass_equals_each_prefix_text_scored_on_its_own(
    critic, tokenizer, layouts, prefix_text_values
):
    questions, responses = layouts
    examples = [encode_example(tokenizer, q, r, "\n") for q, r in zip(questions, responses, strict=True)]
    single = score_examples(critic, examples, tokenizer.pad_token_id, batch_size=8)

    assert [len(v) for v in single] == [len(clean_steps(r)) for r in responses]
    assert sum(len(v) for v in single) >= 3 * len(responses)
    assert _max_difference(single, prefix_text_values) < 1e-4
    flat = [v for vs in single for v in vs]
    assert all(0 < v < 1 for v in flat)
    assert max(flat) - min(flat) > 0.1  # the random head makes values differ, so agreement is not trivial
    # The bench's per-prefix baseline (the same ids cut at the same positions) agrees too.
    per_prefix = score_prefixes_separately(critic, examples, tokenizer.pad_token_id, batch_size=8)
    assert _max_difference(per_prefix, prefix_text_values) < 1e-4


@pytest.mark.parametrize("shift", [-1, 1])
def test_a_step_position_off_by_one_disagrees_with_the_prefix_texts(
    critic, tokenizer, layouts, prefix_text_values, shift
):
    """What the test above guards against: reading each step one token early or late."""
    questions, responses = layouts
    examples = [encode_example(tokenizer, q, r, "\n") for q, r in zip(questions, responses, strict=True)]
    for ex in examples:
        ex.step_positions = [min(p + shift, len(ex.input_ids) - 1) for p in ex.step_positions]
    shifted = score_examples(critic, examples, tokenizer.pad_token_id, batch_size=8)
    assert _max_difference(shifted, prefix_text_values) > 1e-2


def test_encode_example_step_positions_by_hand(tokenizer):
    question = "3 + 4 - 5 ="
    # The tiny tokenizer has one token per character; the prompt is "<|user|>" question "\n" "<|assistant|>".
    prompt_length = 1 + len(question) + 1 + 1
    newline = tokenizer.convert_tokens_to_ids("Ċ")  # byte-level "\n"

    text = "3 + 4 = 7\n7 - 5 = 2\nAnswer: 2"
    example = encode_example(tokenizer, question, text, "\n")
    # Steps end at the newlines (characters 9 and 19) and at the last character (28).
    assert example.step_positions == [prompt_length + 9, prompt_length + 19, prompt_length + 28]
    assert len(example.input_ids) == prompt_length + len(text)
    prompt_ids = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    assert example.input_ids[:prompt_length] == prompt_ids
    assert [example.input_ids[p] for p in example.step_positions] == [
        newline,
        newline,
        tokenizer.convert_tokens_to_ids("2"),
    ]

    # A blank line belongs to the step before it (read at its second newline, character 10); a trailing
    # newline ends the last step (character 20).
    blank = encode_example(tokenizer, question, "3 + 4 = 7\n\n7 - 5 = 2\n", "\n")
    assert blank.step_positions == [prompt_length + 10, prompt_length + 20]
    assert len(blank.input_ids) == prompt_length + 21


def test_batching_and_padding_do_not_change_values(critic, tokenizer, rows):
    examples = [
        encode_example(tokenizer, q, s, "\n") for q, s in zip(rows["question"], rows["solution"], strict=True)
    ]
    assert len({len(ex.input_ids) for ex in examples}) > 3  # batches of 16 are padded
    one = score_examples(critic, examples, tokenizer.pad_token_id, batch_size=1)
    sixteen = score_examples(critic, examples, tokenizer.pad_token_id, batch_size=16)
    assert _max_difference(one, sixteen) < 1e-5


@pytest.mark.parametrize("delimiter", ["\n", "\n\n"])
def test_text_and_clean_steps_give_the_same_values(critic, tokenizer, rows, delimiter):
    questions = rows["question"][:6]
    steps = [s.split("\n") for s in rows["solution"][:6]]
    texts = [delimiter.join(s) for s in steps]
    from_text = score_steps(critic, tokenizer, questions, texts, delimiter, batch_size=4)
    from_steps = score_steps(critic, tokenizer, questions, steps, delimiter, batch_size=4)
    assert from_text == from_steps
    assert [len(v) for v in from_text] == [len(s) for s in steps]
    # The same steps under another delimiter are another input, so the values must change.
    other = "\n" if delimiter == "\n\n" else "\n\n"
    assert score_steps(critic, tokenizer, questions, steps, other, batch_size=4) != from_steps


def test_response_without_visible_text_is_named(critic, tokenizer):
    questions = ["1 + 2 =", "3 - 1 =", "2 + 2 ="]
    with pytest.raises(ValueError, match="response 1"):
        score_steps(critic, tokenizer, questions, ["1 + 2 = 3\nAnswer: 3", " \n\n ", "Answer: 4"], "\n")
    with pytest.raises(ValueError, match="response 2"):
        score_steps(critic, tokenizer, questions, ["Answer: 3", ["Answer: 2"], ["", " "]], "\n")
    with pytest.raises(ValueError, match="3 questions but 2 responses"):
        score_steps(critic, tokenizer, questions, ["Answer: 3", "Answer: 2"], "\n")


def test_init_critic_starts_at_one_half_on_the_actor_backbone(tiny_actor_dir, tokenizer, rows):
    critic = init_critic(tiny_actor_dir, delimiter="\n\n")
    values = score_steps(critic, tokenizer, rows["question"][:8], rows["solution"][:8], "\n")
    assert {v for vs in values for v in vs} == {0.5}
    assert critic.config.num_labels == 1
    assert critic_delimiter(critic) == "\n\n"
    actor = load_actor(tiny_actor_dir).model.state_dict()
    backbone = critic.model.state_dict()
    assert backbone.keys() == actor.keys()
    assert all(torch.equal(backbone[k], actor[k]) for k in actor)


def test_extra_layers_start_as_the_identity_and_reload(tiny_actor_dir, tokenizer, rows, tmp_path):
    questions, solutions = rows["question"][:8], rows["solution"][:8]
    shallow, deep = init_critic(tiny_actor_dir), init_critic(tiny_actor_dir, extra_layers=2)
    assert len(deep.model.layers) == len(shallow.model.layers) + 2 == deep.config.num_hidden_layers
    _randomize_head(shallow, seed=1)
    deep.score.load_state_dict(shallow.score.state_dict())
    want = score_steps(shallow, tokenizer, questions, solutions, "\n")
    got = score_steps(deep, tokenizer, questions, solutions, "\n")
    assert _max_difference(got, want) < 1e-6 and len({round(v, 3) for vs in want for v in vs}) > 4
    deep.save_pretrained(tmp_path)
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert score_steps(plain, tokenizer, questions, solutions, "\n") == got
    with pytest.raises(ValueError, match="extra_layers must be >= 0"):
        init_critic(tiny_actor_dir, extra_layers=-1)


def test_build_tiny_critic(tokenizer, rows):
    size = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3)
    critic = build_tiny_critic(tokenizer, size)
    assert critic.config.num_labels == 1 and critic.score.out_features == 1
    actor = build_tiny_model(tokenizer, size).model.state_dict()
    assert all(torch.equal(critic.model.state_dict()[k], actor[k]) for k in actor)
    values = score_steps(
        critic, tokenizer, rows["question"][:4], rows["solution"][:4], critic_delimiter(critic)
    )
    assert [len(v) for v in values] == [len(s.split("\n")) for s in rows["solution"][:4]]
    assert {v for vs in values for v in vs} == {0.5}


def test_saved_critic_reloads_with_plain_from_pretrained(critic, tokenizer, rows, tmp_path):
    questions, solutions = rows["question"][:8], rows["solution"][:8]
    before = score_steps(critic, tokenizer, questions, solutions, "\n")
    critic.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    plain = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert score_steps(plain, tokenizer, questions, solutions, "\n") == before
    loaded = load_critic(tmp_path)
    assert critic_delimiter(loaded) == "\n"
    assert score_steps(loaded, load_critic_tokenizer(tmp_path), questions, solutions, "\n") == before


def test_load_critic_rejects_an_actor(tiny_actor_dir):
    with pytest.raises(ValueError, match=r"not a step critic.*num_labels=2"):
        load_critic(tiny_actor_dir)


def test_label_metrics_the_labels_cannot_define_are_nan_not_a_crash(critic, tokenizer, rows, caplog):
    from datasets import Dataset

    from llmac.critic.evaluation import evaluate_on_labels

    steps = [clean_steps(s, "\n") for s in rows["solution"][:6]]
    mixed = {"prompt": rows["question"][:6], "completions": steps,
             "labels": [[1.0] * len(s) if i % 2 else [1.0] + [0.0] * (len(s) - 1) for i, s in enumerate(steps)],
             "hard_labels": [[1] * len(s) if i % 2 else [1] + [0] * (len(s) - 1) for i, s in enumerate(steps)]}  # fmt: skip
    defined = evaluate_on_labels(critic, tokenizer, Dataset.from_dict(mixed), "\n")
    assert 0 <= defined.step_auc <= 1 and 0 <= defined.first_error_f1 <= 1
    all_wrong = {
        **mixed,
        "labels": [[0.0] * len(s) for s in steps],
        "hard_labels": [[0] * len(s) for s in steps],
    }
    undefined = evaluate_on_labels(critic, tokenizer, Dataset.from_dict(all_wrong), "\n")  # a weak actor's
    assert math.isnan(undefined.step_auc) and math.isnan(undefined.first_error_f1)
    assert undefined.num_solutions == 6
    assert "step AUC is undefined" in caplog.text and "first-error F1 is undefined" in caplog.text
