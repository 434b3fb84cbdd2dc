"""Datasets from a hand-built tree: which rows, which values, and that llmac's readers load them."""

from __future__ import annotations

import pytest
from datasets import load_from_disk

from llmac.critic.data import load_labelled_data, read_labelled_rows, validate_row
from llmac.data.loading import PromptDataConfig, load_prompts
from llmac.mcts.exports import rstar_pair_rows, step_preference_rows, value_label_rows, verified_solution_rows
from llmac.mcts.tree import StepSample, Tree
from llmac.models import train_tiny_tokenizer


def sample(text: str, ends: bool = False) -> StepSample:
    return StepSample(text, [ord(c) for c in text], ends)


def hand_tree() -> Tree:
    """root -> a -> b -> {"Answer: 7" right, "Answer: 8" wrong}; a -> c (evaluated); root -> x -> "Answer: 0"."""
    tree = Tree("q", "7", "q", scale="pm1")
    a, x = tree.expand(tree.root, [sample("a\n"), sample("x\n")])
    b, c = tree.expand(a, [sample("b\n"), sample("c\n")])
    right, wrong = tree.expand(b, [sample("Answer: 7", True), sample("Answer: 8", True)])
    (y,) = tree.expand(x, [sample("Answer: 0", True)])
    for node, value in [(a, 0.0), (x, -1.0), (b, 0.5), (c, -0.5)]:
        tree.backup(node, value)
    for node, ok in [(right, True), (wrong, False), (y, False)]:
        tree.backup(node, tree.set_verdict(node, float(ok), ok))
    return tree


def unwritable_tree() -> Tree:
    """A step that holds the delimiter (a token carried the next step along) and a right answer."""
    tree = Tree("p", "7", "p", scale="01")
    bad, good = tree.expand(tree.root, [sample("d\ne\n"), sample("Answer: 7", True)])
    tree.backup(bad, 0.5)
    tree.backup(good, tree.set_verdict(good, 1.0, True))
    return tree


# Node values on [0, 1] = (q + 1) / 2: a q = 0 (5 visits), b q = 1/6 (3), c -0.5, x -1, answers +1/-1.
B = (1 / 6 + 1) / 2


def flat(lists):
    return [x for values in lists for x in values]


def test_value_labels_one_row_per_visited_leaf(caplog):
    rows = value_label_rows([hand_tree(), unwritable_tree()]).to_dict()
    assert "left out 1 paths" in caplog.text  # "d\ne" cannot be one clean step
    assert rows["completions"] == [["a", "b", "Answer: 7"], ["a", "b", "Answer: 8"], ["a", "c"], ["x", "Answer: 0"],
                                   ["Answer: 7"]]  # fmt: skip
    assert flat(rows["labels"]) == pytest.approx([0.5, B, 1.0, 0.5, B, 0.0, 0.5, 0.25, 0.0, 0.0, 1.0])
    assert rows["hard_labels"] == [[1, 1, 1], [1, 1, 0], [1, 0], [0, 0], [1]]
    assert rows["visits"] == [[5, 3, 1], [5, 3, 1], [5, 1], [2, 1], [1]]
    assert rows["outcome"] == [1.0, 0.0, None, 0.0, 1.0]
    assert rows["tree_index"] == [0, 0, 0, 0, 1] and rows["prompt"] == ["q"] * 4 + ["p"]
    # Only nodes visited twice: b's answers (1 visit each) drop, so b and x become the leaves.
    twice = value_label_rows([hand_tree()], min_visits=2)
    assert twice["completions"] == [["a", "b"], ["x"]] and flat(twice["labels"]) == pytest.approx(
        [0.5, B, 0.0]
    )


def test_step_preferences_best_child_against_lower_siblings():
    rows = step_preference_rows([hand_tree()]).to_dict()
    assert list(zip(rows["prefix"], rows["chosen"], rows["rejected"], strict=True)) == [
        ([], "a", "x"),
        (["a"], "b", "c"),
        (["a", "b"], "Answer: 7", "Answer: 8"),
    ]
    assert rows["chosen_value"] == pytest.approx([0.5, B, 1.0])
    assert rows["rejected_value"] == pytest.approx([0.0, 0.25, 0.0])
    wide = step_preference_rows([hand_tree()], margin=0.4)  # b - c = 7/12 - 1/4 = 1/3 is too close
    assert wide["chosen"] == ["a", "Answer: 7"]


def test_rstar_pairs_need_a_correct_and_a_wrong_leading_child():
    rows = rstar_pair_rows([hand_tree()]).to_dict()
    # Under a, c leads to no terminal at all: no pair there.
    assert list(zip(rows["prefix"], rows["chosen"], rows["rejected"], strict=True)) == [
        ([], "a", "x"),
        (["a", "b"], "Answer: 7", "Answer: 8"),
    ]


def test_verified_solutions_are_the_correct_terminals():
    rows = verified_solution_rows([hand_tree(), unwritable_tree()]).to_dict()
    assert rows["solution"] == ["a\nb\nAnswer: 7", "Answer: 7"]
    assert rows["value"] == [1.0, 1.0] and rows["visits"] == [1, 1] and rows["tree_index"] == [0, 1]
    assert rows["question"] == ["q", "p"] and rows["answer"] == ["7", "7"]


def test_exports_load_back_with_the_readers_that_train_on_them(tmp_path):
    trees = [hand_tree(), unwritable_tree()]
    labels, prefs, sft = tmp_path / "labels", tmp_path / "prefs", tmp_path / "sft"
    value_label_rows(trees).save_to_disk(str(labels))
    step_preference_rows(trees).save_to_disk(str(prefs))
    verified_solution_rows(trees).save_to_disk(str(sft))

    log, rows = read_labelled_rows(labels)
    assert all(validate_row(row, n, log, "\n", kind) for n, row in rows for kind in ("soft", "hard"))
    assert log.problems == []
    tokenizer = train_tiny_tokenizer(["q p abcx Answer: 0123456789\n"])
    encoded = load_labelled_data(labels, tokenizer, "\n")
    assert encoded.num_steps == 3 + 3 + 2 + 2 + 1

    assert load_from_disk(str(prefs)).to_dict() == step_preference_rows(trees).to_dict()
    problems = load_prompts(PromptDataConfig(path=str(sft), solution_field="solution"))
    assert problems.to_dict() == {"question": ["q", "p"], "answer": ["7", "7"],
                                  "solution": ["a\nb\nAnswer: 7", "Answer: 7"]}  # fmt: skip


def test_empty_exports_keep_their_columns():
    empty = Tree("q", "7", "q")
    assert value_label_rows([empty]).column_names[:3] == ["prompt", "completions", "labels"]
    assert len(step_preference_rows([empty])) == 0 == len(verified_solution_rows([empty]))
