"""Agent-R revisions and MMC critique pairs from a hand-built tree: which pairs, which first error."""

from __future__ import annotations

import pytest
from datasets import load_from_disk

from llmac.mcts.trajectories import DEFAULT_REVISION, critique_pair_rows, revision_rows, shared_depth
from llmac.mcts.tree import StepSample, Tree

R = DEFAULT_REVISION


def sample(text: str, ends: bool = False) -> StepSample:
    return StepSample(text, [ord(c) for c in text], ends)


def hand_tree(w3_reward: float = 0.0):
    """root -> a -> b -> {R1 "Answer: 7" right, W1 "Answer: 8"}; a -> c -> d -> {W2 "Answer: 1",
    R2 "Answer: 7" right}; root -> x -> W3 "Answer: 0". R1 is visited twice, every other node once."""
    tree = Tree("q", "7", "q")
    a, x = tree.expand(tree.root, [sample("a\n"), sample("x\n")])
    b, c = tree.expand(a, [sample("b\n"), sample("c\n")])
    r1, w1 = tree.expand(b, [sample("Answer: 7", True), sample("Answer: 8", True)])
    (d,) = tree.expand(c, [sample("d\n")])
    w2, r2 = tree.expand(d, [sample("Answer: 1", True), sample("Answer: 7", True)])
    (w3,) = tree.expand(x, [sample("Answer: 0", True)])
    for node, reward in [(r1, 1.0), (w1, 0.0), (w2, 0.0), (r2, 1.0), (w3, w3_reward)]:
        tree.backup(node, tree.set_verdict(node, reward, reward == 1.0))
    tree.backup(r1, 1.0)
    return tree, dict(a=a, b=b, c=c, d=d, x=x, r1=r1, r2=r2, w1=w1, w2=w2, w3=w3)


def test_shared_depth():
    _, n = hand_tree()
    assert shared_depth(n["r1"], n["w1"]) == 2 and shared_depth(n["r2"], n["w2"]) == 3
    assert shared_depth(n["r1"], n["w3"]) == 0 and shared_depth(n["r1"], n["r1"]) == 3


def test_revisions_splice_bad_prefix_phrase_and_good_continuation(tmp_path):
    tree, _ = hand_tree()
    rows = revision_rows([tree])
    # Best correct terminal: R1 (reward 1, two visits). Bad paths in tree order: W1, W2, W3.
    assert rows["bad_prefix"] == [["a", "b", "Answer: 8"], ["a", "c", "d", "Answer: 1"], ["x"]]
    # W2: c and d still lead to R2, so its first wrong step is its last; W3: x never reaches the gold.
    assert rows["first_wrong"] == [2, 3, 0]
    assert rows["good_continuation"] == [["Answer: 7"], ["b", "Answer: 7"], ["a", "b", "Answer: 7"]]
    assert rows["masked_text"] == ["a\nb\nAnswer: 8\n", "a\nc\nd\nAnswer: 1\n", "x\n"]
    assert rows["trained_text"] == [f"{R}Answer: 7", f"{R}b\nAnswer: 7", f"{R}a\nb\nAnswer: 7"]
    rows.save_to_disk(str(tmp_path / "rev"))
    assert load_from_disk(str(tmp_path / "rev")).to_dict() == rows.to_dict()


def test_revision_thresholds_and_judge():
    tree, _ = hand_tree(w3_reward=0.4)  # W3 is wrong but partly rewarded: v_high - v_low = 0.6
    assert len(revision_rows([tree], beta=0.5)) == 3 and len(revision_rows([tree], beta=0.6)) == 2
    assert len(revision_rows([tree], alpha=1.5)) == 0  # no correct terminal good enough
    at_divergence = revision_rows([tree], judge=lambda tree, path, start: start)
    assert at_divergence["first_wrong"] == [2, 1, 0]
    assert at_divergence["bad_prefix"][1] == ["a", "c"]
    with pytest.raises(ValueError, match="judge returned step 9"):
        revision_rows([tree], judge=lambda tree, path, start: 9)


def test_critique_pairs_take_the_closest_correct_path():
    tree, _ = hand_tree()
    rows = critique_pair_rows([tree]).to_dict()
    assert rows["wrong_steps"] == [["a", "b", "Answer: 8"], ["a", "c", "d", "Answer: 1"], ["x", "Answer: 0"]]
    assert rows["correct_steps"] == [
        ["a", "b", "Answer: 7"],
        ["a", "c", "d", "Answer: 7"],
        ["a", "b", "Answer: 7"],
    ]
    assert rows["shared_steps"] == [2, 3, 0] and rows["first_wrong"] == [2, 3, 0]
    assert rows["reference_step"] == ["Answer: 7", "Answer: 7", "a"]


def test_no_correct_terminal_no_rows():
    tree = Tree("q", "7", "q")
    (w,) = tree.expand(tree.root, [sample("Answer: 0", True)])
    tree.backup(w, tree.set_verdict(w, 0.0, False))
    assert len(revision_rows([tree])) == 0 == len(critique_pair_rows([tree]))
    assert "trained_text" in revision_rows([tree]).column_names
