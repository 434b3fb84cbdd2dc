"""Datasets from pairs of whole paths of a tree: Agent-R revision trajectories, MMC critique pairs.

Both pair a wrong terminal (verified wrong) with a correct one of the same tree and find the wrong
path's first wrong step at or after their divergence (the deepest common ancestor). By default that
is the first node of the wrong path below which the tree never reached a correct terminal (the
Math-Shepherd "hard label" first error); ``judge`` replaces it (e.g. the actor as judge, as in Agent-R).
Steps are clean step strings; pairs holding a step not writable as one are left out.

- :func:`revision_rows` (Agent-R): each wrong terminal with reward ``v_low`` against the tree's best
  correct terminal (``v_high`` = highest reward, then most visits) when ``v_high >= alpha`` and
  ``v_high - v_low > beta``. Columns: ``prompt`` (question), ``bad_prefix`` (wrong steps up to and
  including the first wrong one), ``revision`` (the phrase), ``good_continuation`` (the correct
  path's steps after the divergence), ``masked_text`` = ``join_steps(bad_prefix) + delimiter`` (no
  loss), ``trained_text`` = ``revision + join_steps(good_continuation)`` (loss), ``first_wrong``,
  ``answer``, ``tree_index``. For TRL's prompt-completion SFT: prompt = chat-templated question +
  ``masked_text``, completion = ``trained_text`` (:func:`revision_sft_rows`); the loss then covers
  exactly the trained part.
- :func:`critique_pair_rows` (MMC): each wrong terminal against the correct terminal sharing the
  deepest ancestor with it (then most visits). Columns: ``prompt``, ``wrong_steps``,
  ``correct_steps``, ``shared_steps`` (steps the two paths share), ``first_wrong`` (index in
  ``wrong_steps``: steps before it are judged correct, it is judged wrong), ``reference_step`` (the
  correct path's step in that position, when it has one, else ""), ``answer``, ``tree_index``.
  Rendering the critique text needs the critique format of the critique pipeline, which this
  package may not import: ``StepJudgement`` per step up to ``first_wrong`` then ``render(...,
  final_correct=False)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from datasets import Dataset, Features, List, Value

from llmac.mcts.exports import records_dataset, writable_steps
from llmac.mcts.tree import Node, Tree
from llmac.steps import DEFAULT_DELIMITER, join_steps

# (tree, wrong path nodes, index of the first step after the divergence) -> first wrong step index
Judge = Callable[[Tree, list[Node], int], int]

DEFAULT_REVISION = "Wait, this is wrong. Let me go back and try again.\n"

REVISION_FEATURES = Features(
    {
        "prompt": Value("string"),
        "bad_prefix": List(Value("string")),
        "revision": Value("string"),
        "good_continuation": List(Value("string")),
        "masked_text": Value("string"),
        "trained_text": Value("string"),
        "first_wrong": Value("int64"),
        "answer": Value("string"),
        "tree_index": Value("int64"),
    }
)
CRITIQUE_PAIR_FEATURES = Features(
    {
        "prompt": Value("string"),
        "wrong_steps": List(Value("string")),
        "correct_steps": List(Value("string")),
        "shared_steps": Value("int64"),
        "first_wrong": Value("int64"),
        "reference_step": Value("string"),
        "answer": Value("string"),
        "tree_index": Value("int64"),
    }
)


def shared_depth(a: Node, b: Node) -> int:
    """How many steps the paths to ``a`` and ``b`` share (the depth of their deepest common ancestor)."""
    depth = 0
    for x, y in zip(a.path(), b.path(), strict=False):
        if x is not y:
            break
        depth += 1
    return depth


def never_correct_below(tree: Tree, wrong_path: list[Node], start: int) -> int:
    """The first node of ``wrong_path`` from ``start`` on with no correct terminal at or below it."""
    return next(t for t in range(start, len(wrong_path)) if not wrong_path[t].has_correct_terminal())


def _terminals(tree: Tree, correct: bool) -> list[Node]:
    return [n for n in tree.nodes() if n.terminal and n.correct is correct]


def _first_wrong(tree: Tree, wrong: Node, shared: int, judge: Judge) -> int:
    path = wrong.path()
    index = judge(tree, path, shared)
    if not shared <= index < len(path):
        raise ValueError(
            f"judge returned step {index}, outside the wrong path's steps {shared}..{len(path) - 1}"
        )
    return index


def revision_rows(
    trees: Sequence[Tree],
    alpha: float = 0.5,
    beta: float = 0.0,
    revision: str = DEFAULT_REVISION,
    judge: Judge = never_correct_below,
    delimiter: str = DEFAULT_DELIMITER,
) -> Dataset:
    """Agent-R revision trajectories (see the module doc for the columns)."""
    records = []
    for index, tree in enumerate(trees):
        correct = _terminals(tree, True)
        if not correct:
            continue
        good = max(correct, key=lambda n: (n.reward, n.visits))
        if good.reward < alpha:
            continue
        for bad in _terminals(tree, False):
            if good.reward - bad.reward <= beta:
                continue
            shared = shared_depth(good, bad)
            first = _first_wrong(tree, bad, shared, judge)
            prefix, continuation = bad.steps()[: first + 1], good.steps()[shared:]
            if not continuation or not writable_steps(prefix + continuation, delimiter):
                continue
            records.append(
                {
                    "prompt": tree.question,
                    "bad_prefix": prefix,
                    "revision": revision,
                    "good_continuation": continuation,
                    "masked_text": join_steps(prefix, delimiter) + delimiter,
                    "trained_text": revision + join_steps(continuation, delimiter),
                    "first_wrong": first,
                    "answer": tree.answer,
                    "tree_index": index,
                }
            )
    return records_dataset(records, REVISION_FEATURES)


def critique_pair_rows(
    trees: Sequence[Tree], judge: Judge = never_correct_below, delimiter: str = DEFAULT_DELIMITER
) -> Dataset:
    """MMC critique pairs (see the module doc for the columns)."""
    records = []
    for index, tree in enumerate(trees):
        correct = _terminals(tree, True)
        for bad in _terminals(tree, False) if correct else []:
            good = max(correct, key=lambda n: (shared_depth(n, bad), n.visits))
            shared = shared_depth(good, bad)
            first = _first_wrong(tree, bad, shared, judge)
            wrong_steps, correct_steps = bad.steps(), good.steps()
            if not writable_steps(wrong_steps + correct_steps, delimiter):
                continue
            records.append(
                {
                    "prompt": tree.question,
                    "wrong_steps": wrong_steps,
                    "correct_steps": correct_steps,
                    "shared_steps": shared,
                    "first_wrong": first,
                    "reference_step": correct_steps[first] if first < len(correct_steps) else "",
                    "answer": tree.answer,
                    "tree_index": index,
                }
            )
    return records_dataset(records, CRITIQUE_PAIR_FEATURES)


def revision_sft_rows(revisions: Dataset, template: Callable[[str], str] = str) -> Dataset:
    """Revision trajectories as TRL prompt-completion SFT rows: ``prompt`` = ``template(question)``
    (e.g. the chat template, :func:`llmac.data.loading.format_prompt`) + ``masked_text``, ``completion``
    = ``trained_text``. TRL's SFTTrainer computes the loss on completion tokens only (its
    ``completion_only_loss``), so the bad prefix is context and the revision and good continuation
    are learned."""
    return revisions.map(
        lambda row: {
            "prompt": template(row["prompt"]) + row["masked_text"],
            "completion": row["trained_text"],
        },
        remove_columns=revisions.column_names,
    )
