"""Leaf evaluators: the critic's value at a prefix's last step, and the mix of two evaluators."""

from __future__ import annotations

import pytest
import torch

from llmac.critic.model import build_tiny_critic
from llmac.critic.scoring import encode_example, score_prefixes_separately
from llmac.mcts.tree import StepSample, Tree
from llmac.mcts.values import CriticValue, MixedValue
from llmac.models import TinyModelConfig, train_tiny_tokenizer


def sample(text: str) -> StepSample:
    return StepSample(text, [ord(c) for c in text], False)


def test_critic_value_is_the_per_prefix_score_of_the_last_step():
    tokenizer = train_tiny_tokenizer(["3 + 4 = ?\n3 + 4 = 7\n7 + 1 = 8\nAnswer: 8 9"])
    critic = build_tiny_critic(tokenizer, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                          intermediate_size=64, seed=1))  # fmt: skip
    torch.manual_seed(0)
    torch.nn.init.normal_(critic.score.weight, std=1.0)  # the built head is zero: every value 0.5
    tree = Tree("3 + 4 = ?", "8", "3 + 4 = ?")
    (first,) = tree.expand(tree.root, [sample("3 + 4 = 7\n")])
    (second,) = tree.expand(first, [sample("7 + 1 = 9\n")])
    leaves = [(tree, first), (tree, second)]
    got = CriticValue(critic, tokenizer, "\n")(leaves)
    # Independent path: one forward pass per prefix, read at its last token (the step's delimiter).
    examples = [encode_example(tokenizer, tree.question, n.prefix_text(), "\n") for n in (first, second)]
    want = [v[-1] for v in score_prefixes_separately(critic, examples, tokenizer.pad_token_id)]
    assert got == pytest.approx(want, abs=1e-6)
    assert len(set(got)) == 2 and all(0 < v < 1 for v in got)
    assert CriticValue(critic, tokenizer, "\n")([]) == []


def test_mixed_value_weights_its_two_evaluators():
    mix = MixedValue(lambda leaves: [1.0, 0.5], lambda leaves: [0.0, 0.5], weight=0.75)
    assert mix([None, None]) == [0.75, 0.5]
    with pytest.raises(ValueError, match="mix weight"):
        MixedValue(mix, mix, weight=1.5)
