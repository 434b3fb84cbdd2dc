"""Search on a real (tiny, random) HFEngine: exact prefixes, bookkeeping invariants, same seed same trees."""

from __future__ import annotations

import pytest

from llmac.critic.labelling import MCLabelConfig
from llmac.engines.hf import HFEngine
from llmac.mcts.search import Search, SearchConfig, new_trees
from llmac.mcts.values import RolloutValue
from llmac.models import TinyModelConfig, build_tiny_model, train_tiny_tokenizer


class CountingEngine(HFEngine):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.step_calls = 0

    def sample_step(self, prompts, prefixes, sampling):
        self.step_calls += 1
        return super().sample_step(prompts, prefixes, sampling)


@pytest.fixture(scope="module")
def engine():
    tokenizer = train_tiny_tokenizer(["1 + 2 = 3"])  # 6 characters: the delimiter is frequent
    model = build_tiny_model(tokenizer, TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2,
                                                        intermediate_size=64, seed=2))  # fmt: skip
    return CountingEngine(model, tokenizer=tokenizer, delimiter=" ")  # a frequent character: many steps


def reward(texts, golds):
    return [float(t.rstrip().endswith(g)) for t, g in zip(texts, golds, strict=True)]


def run(engine, iterations=4):
    config = SearchConfig(branching=3, max_children=3, max_depth=4, max_step_tokens=12, seed=7)
    trees = new_trees(engine, ["1 + 2", "2 + 1"], ["3", "3"], config)
    values = RolloutValue(engine, reward, MCLabelConfig(num_rollouts=2, max_new_tokens=6, seed=1))
    search = Search(engine, trees, config, values, reward)
    search.run(iterations)
    return trees, search.stats


def shape(tree):
    return [(n.depth, n.text, n.visits, round(n.value_sum, 9), n.terminal) for n in tree.nodes()]


def test_search_on_a_real_engine(engine):
    before = engine.step_calls
    trees, stats = run(engine)
    assert engine.step_calls - before == stats.engine_calls <= 4 and stats.iterations == 4
    for tree in trees:
        assert tree.root.expanded and tree.root.visits == sum(c.visits for c in tree.root.children)
        for node in tree.nodes():
            assert engine.decode(node.prefix_ids()) == node.prefix_text()  # continued where samples stopped
            if not node.terminal:
                assert node.text.endswith(" ") and node.depth < 4  # the step ended at the delimiter
                # evaluated once when created, plus every evaluation below it
                assert node.visits == 1 + sum(c.visits for c in node.children)
            assert node.depth <= 4 and len(node.children) <= 3
    inner = [n for tree in trees for n in tree.nodes() if not n.terminal]
    assert len(inner) >= 4 and max(n.depth for tree in trees for n in tree.nodes()) >= 2  # a real search
    assert stats.nodes == sum(1 for tree in trees for _ in tree.nodes())
    again, _ = run(engine)
    assert [shape(t) for t in again] == [shape(t) for t in trees]  # same seed, same trees
