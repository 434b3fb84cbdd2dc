"""MCTS trees and selection: scores, the chosen child, backed-up values and limits, all by hand."""

from __future__ import annotations

import math

import pytest

from llmac.mcts.select import ChildStats, puct_score, select_child, selection_scores, uct_score
from llmac.mcts.tree import StepSample, Tree, from_probability, terminal_value, to_probability

# Parent visited 10 times; c = 2. ln 10 = 2.302585, sqrt 10 = 3.162278.
CHILDREN = [ChildStats(q=0.5, visits=4, prior=0.5), ChildStats(0.8, 5, 0.25), ChildStats(-0.2, 1, 0.25)]


def test_uct_and_puct_scores_by_hand():
    # UCT: Q + 2 sqrt(ln 10 / N)
    assert selection_scores(CHILDREN, 10, "uct", 2.0) == pytest.approx(
        [2.017428, 2.157228, 2.834854], abs=1e-6
    )
    # PUCT: Q + 2 P sqrt(10) / (1 + N)
    assert selection_scores(CHILDREN, 10, "puct", 2.0) == pytest.approx(
        [1.132456, 1.063523, 0.590569], abs=1e-6
    )
    assert uct_score(0.3, 0, 5, 1.0) == math.inf and puct_score(0.3, 0, 5, 0.1, 1.0) == math.inf


def test_the_rules_choose_differently_and_c_zero_is_greedy():
    assert select_child(CHILDREN, 10, "uct", 2.0) == 2  # the rarely visited child: exploration term wins
    assert select_child(CHILDREN, 10, "puct", 2.0) == 0  # the high-prior child
    assert select_child(CHILDREN, 10, "uct", 0.0) == 1 == select_child(CHILDREN, 10, "puct", 0.0)
    with pytest.raises(ValueError, match="selection rule"):
        select_child(CHILDREN, 10, "ucb9", 1.0)


def test_unvisited_children_come_first_higher_prior_first():
    unvisited = [*CHILDREN, ChildStats(0.0, 0, 0.1), ChildStats(0.0, 0, 0.3), ChildStats(0.0, 0, 0.3)]
    assert select_child(unvisited, 10, "uct", 2.0) == 4  # prior 0.3; the earlier of the two ties
    assert select_child(unvisited, 10, "puct", 100.0) == 4


def test_value_scales():
    assert (terminal_value(True, "pm1"), terminal_value(False, "pm1")) == (1.0, -1.0)
    assert (terminal_value(True, "01"), terminal_value(False, "01")) == (1.0, 0.0)
    assert from_probability(0.25, "pm1") == -0.5 and to_probability(-0.5, "pm1") == 0.25
    assert from_probability(0.25, "01") == 0.25 == to_probability(0.25, "01")
    with pytest.raises(ValueError, match="value scale"):
        terminal_value(True, "pm")


def sample(text: str, ends: bool = False) -> StepSample:
    return StepSample(text, [ord(c) for c in text], ends)


def test_expansion_deduplicates_keeps_the_most_sampled_and_sets_priors():
    tree = Tree("q", "7", "q", max_children=2)
    children = tree.expand(
        tree.root, [sample("a\n"), sample("b\n"), sample("a \n"), sample("Answer: 1", True)]
    )
    assert [c.text for c in children] == ["a\n", "b\n"]  # "a \n" is "a\n"; width 2 drops the last
    assert [c.prior for c in children] == [0.5, 0.25]
    assert [c.depth for c in children] == [1, 1] and not any(c.terminal for c in children)
    with pytest.raises(ValueError, match="unexpanded"):
        tree.expand(tree.root, [sample("c\n")])


def test_backup_is_the_mean_along_the_path_and_selection_follows_it():
    tree = Tree("q", "7", "q", scale="pm1")
    a, b = tree.expand(tree.root, [sample("a\n"), sample("b\n")])
    (a1, a2) = tree.expand(a, [sample("c\n"), sample("Answer: 7", True)])
    assert a2.terminal and not a1.terminal
    assert tree.set_verdict(a2, 1.0, True) == 1.0
    tree.backup(a1, 0.6)
    tree.backup(a2, 1.0)
    tree.backup(b, -1.0)
    assert (a1.visits, a2.visits, a.visits, b.visits, tree.root.visits) == (1, 1, 2, 1, 3)
    assert a.q == pytest.approx(0.8) and b.q == -1.0 and tree.root.q == pytest.approx(0.6 / 3)
    # UCT c=1 at the root (N=3): a 0.8 + sqrt(ln3/2) = 1.541, b -1 + sqrt(ln3) = 0.048 -> a; in a (N=2):
    # a1 0.6 + sqrt(ln2) = 1.433, a2 1 + sqrt(ln2) = 1.833 -> the terminal a2, which stops the descent.
    assert tree.select_leaf("uct", 1.0) is a2
    # c = 10: a 0.8 + 10 sqrt(ln3/2) = 8.21 < b -1 + 10 sqrt(ln3) = 9.48 -> b, an unexpanded leaf.
    assert tree.select_leaf("uct", 10.0) is b
    assert a2.prefix_text() == "a\nAnswer: 7" and a2.steps() == ["a", "Answer: 7"]
    assert a2.prefix_ids() == [ord(c) for c in "a\nAnswer: 7"]
    assert a.has_correct_terminal() and not b.has_correct_terminal()
    assert [n.text for n in tree.nodes()] == ["a\n", "c\n", "Answer: 7", "b\n"]


def test_whitespace_samples_are_no_steps():
    tree = Tree("q", "7", "q")
    (a,) = tree.expand(tree.root, [sample(" \n"), sample("a\n"), sample("\n"), sample("a\n")])
    assert a.prior == 0.5 and not tree.root.terminal  # 2 of the 4 samples
    assert tree.expand(a, [sample(" \n"), sample("\n")]) == [] and a.terminal  # nothing visible follows a


def test_depth_limit_makes_nodes_terminal():
    tree = Tree("q", "7", "q", max_depth=2)
    (a,) = tree.expand(tree.root, [sample("a\n")])
    (b,) = tree.expand(a, [sample("b\n")])
    assert not a.terminal and b.terminal and b.depth == 2
    with pytest.raises(ValueError, match="unexpanded, non-terminal"):
        tree.expand(b, [sample("c\n")])
    with pytest.raises(ValueError, match="only a terminal"):
        tree.set_verdict(a, 0.0, False)
