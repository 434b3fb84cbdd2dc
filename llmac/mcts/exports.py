"""Datasets from finished search trees, each a ``datasets.Dataset`` with the columns listed here.

Steps are clean step strings (stripped, no delimiter): the Math-Shepherd/TRL-PRM layout. A path
holding a step with no visible text, or one containing the delimiter (a token that carried the next
step's start along), cannot be written in that layout and is left out (counted in the log). Values
are put on [0, 1] (``(q + 1) / 2`` for trees on the ``pm1`` scale) and only nodes visited at least
``min_visits`` times count.

- :func:`value_label_rows` (for ``llmac critic train``): one row per leaf of the visited tree,
  ``prompt`` (question), ``completions`` (its path's steps), ``labels`` (each step's node value),
  ``hard_labels`` (1 if a verified correct terminal lies below that step), ``answer``, ``visits``
  (per step), ``outcome`` (the verifier's reward if the path ends in a terminal, else None),
  ``tree_index``.
- :func:`step_preference_rows` (CR-Planner): at each node, the best child (highest value) against
  every lower sibling at least ``margin`` below it: ``prompt``, ``prefix`` (steps before),
  ``chosen``/``rejected`` (one step each), ``chosen_value``/``rejected_value``, ``answer``,
  ``tree_index``. For a DPO trainer, :func:`to_dpo_rows` maps them to ``prompt`` (the
  chat-templated question, then ``join_steps(prefix) + delimiter`` when there is a prefix),
  ``chosen``, ``rejected``.
- :func:`rstar_pair_rows` (rStar-Math PPM): at each node, the ``k`` highest-value children that
  lead to a correct terminal against the ``k`` lowest-value children whose subtree has terminals,
  none correct; every combination, same columns as the step preferences.
- :func:`verified_solution_rows` (for SFT): every distinct verified correct terminal's text,
  ``question``, ``answer``, ``solution``, ``value``, ``visits``, ``tree_index``; train with
  ``llmac sft --task file --train_path <saved folder> --solution_field solution``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from datasets import Dataset, Features, List, Value

from llmac.critic.labelling import PRM_COLUMNS
from llmac.mcts.tree import Node, Tree, to_probability
from llmac.steps import DEFAULT_DELIMITER, join_steps

logger = logging.getLogger(__name__)

VALUE_LABEL_FEATURES = Features(
    {**PRM_COLUMNS, "visits": List(Value("int64")), "outcome": Value("float64"), "tree_index": Value("int64")}
)
PAIR_FEATURES = Features(
    {
        "prompt": Value("string"),
        "prefix": List(Value("string")),
        "chosen": Value("string"),
        "rejected": Value("string"),
        "chosen_value": Value("float64"),
        "rejected_value": Value("float64"),
        "answer": Value("string"),
        "tree_index": Value("int64"),
    }
)
SOLUTION_FEATURES = Features(
    {
        "question": Value("string"),
        "answer": Value("string"),
        "solution": Value("string"),
        "value": Value("float64"),
        "visits": Value("int64"),
        "tree_index": Value("int64"),
    }
)


def _value(tree: Tree, node: Node) -> float:
    return min(1.0, max(0.0, to_probability(node.q, tree.scale)))


def writable_steps(steps: Sequence[str], delimiter: str) -> bool:
    """Whether every step is non-empty and free of the delimiter, so it can be written as a clean step."""
    return all(step and delimiter not in step for step in steps)


def _visited(node: Node, min_visits: int) -> list[Node]:
    return [child for child in node.children if child.visits >= min_visits]


def _rows(records: list[dict], features: Features, skipped: int, what: str) -> Dataset:
    if skipped:
        logger.warning("left out %d %s with a step not writable as a clean step", skipped, what)
    return records_dataset(records, features)


def records_dataset(records: list[dict], features: Features) -> Dataset:
    """The records as a dataset with ``features``; with none, an empty one with those columns."""
    if records:
        return Dataset.from_list(records, features=features)
    return Dataset.from_dict({name: [] for name in features}, features=features)


def value_label_rows(
    trees: Sequence[Tree], min_visits: int = 1, delimiter: str = DEFAULT_DELIMITER
) -> Dataset:
    """Step value labels, one row per leaf of the visited tree (see the module doc for columns)."""
    records, skipped = [], 0
    for index, tree in enumerate(trees):
        for node in tree.nodes():
            if node.visits < min_visits or _visited(node, min_visits):
                continue
            path = node.path()
            steps = node.steps()
            if not writable_steps(steps, delimiter):
                skipped += 1
                continue
            records.append(
                {
                    "prompt": tree.question,
                    "completions": steps,
                    "labels": [_value(tree, n) for n in path],
                    "hard_labels": [int(n.has_correct_terminal()) for n in path],
                    "answer": tree.answer,
                    "visits": [n.visits for n in path],
                    "outcome": node.reward if node.terminal else None,
                    "tree_index": index,
                }
            )
    return _rows(records, VALUE_LABEL_FEATURES, skipped, "paths")


def _pair(tree: Tree, index: int, parent: Node, chosen: Node, rejected: Node) -> dict:
    return {
        "prompt": tree.question,
        "prefix": parent.steps(),
        "chosen": chosen.text.strip(),
        "rejected": rejected.text.strip(),
        "chosen_value": _value(tree, chosen),
        "rejected_value": _value(tree, rejected),
        "answer": tree.answer,
        "tree_index": index,
    }


def _pairs_dataset(trees: Sequence[Tree], pick, delimiter: str) -> Dataset:
    records, skipped = [], 0
    for index, tree in enumerate(trees):
        for parent in tree.root.walk():
            for chosen, rejected in pick(tree, parent):
                if not writable_steps(
                    [*parent.steps(), chosen.text.strip(), rejected.text.strip()], delimiter
                ):
                    skipped += 1
                    continue
                records.append(_pair(tree, index, parent, chosen, rejected))
    return _rows(records, PAIR_FEATURES, skipped, "pairs")


def step_preference_rows(
    trees: Sequence[Tree], min_visits: int = 1, margin: float = 0.0, delimiter: str = DEFAULT_DELIMITER
) -> Dataset:
    """Best child against each sibling whose value is more than ``margin`` lower (values on [0, 1])."""

    def pick(tree: Tree, parent: Node):
        children = _visited(parent, min_visits)
        if len(children) < 2:
            return []
        best = max(children, key=lambda ch: (_value(tree, ch), ch.visits))
        top = _value(tree, best)
        return [(best, ch) for ch in children if ch is not best and top - _value(tree, ch) > margin]

    return _pairs_dataset(trees, pick, delimiter)


def _leads_wrong(node: Node) -> bool:
    terminals = [n for n in node.walk() if n.terminal and n.correct is not None]
    return bool(terminals) and not any(n.correct for n in terminals)


def rstar_pair_rows(
    trees: Sequence[Tree], k: int = 2, min_visits: int = 1, delimiter: str = DEFAULT_DELIMITER
) -> Dataset:
    """The ``k`` highest-value correct-leading children against the ``k`` lowest-value wrong-leading ones."""

    def pick(tree: Tree, parent: Node):
        children = _visited(parent, min_visits)
        good = sorted((ch for ch in children if ch.has_correct_terminal()), key=lambda ch: -_value(tree, ch))
        bad = sorted((ch for ch in children if _leads_wrong(ch)), key=lambda ch: _value(tree, ch))
        return [(g, b) for g in good[:k] for b in bad[:k]]

    return _pairs_dataset(trees, pick, delimiter)


def verified_solution_rows(trees: Sequence[Tree]) -> Dataset:
    """Every distinct verified correct solution of each tree (see the module doc for columns)."""
    records = []
    for index, tree in enumerate(trees):
        seen = set()
        for node in tree.nodes():
            if not (node.terminal and node.correct):
                continue
            solution = node.prefix_text().strip()
            if solution in seen:
                continue
            seen.add(solution)
            records.append(
                {
                    "question": tree.question,
                    "answer": tree.answer,
                    "solution": solution,
                    "value": _value(tree, node),
                    "visits": node.visits,
                    "tree_index": index,
                }
            )
    return _rows(records, SOLUTION_FEATURES, 0, "solutions")


def to_dpo_rows(
    pairs: Dataset, template: Callable[[str], str] = str, delimiter: str = DEFAULT_DELIMITER
) -> Dataset:
    """Step or rStar pairs as TRL DPO rows: ``prompt`` = ``template(question)`` (e.g. the chat template,
    :func:`llmac.data.loading.format_prompt`) then the prefix steps each ended by ``delimiter``, which is
    where the actor writes its next step; ``chosen``/``rejected`` the two steps.

    TRL's DPOTrainer ends a plain-text completion with the EOS token, so a pair also teaches stopping
    after the step; the preference between the two steps is what it compares.
    """

    def row(pair: dict) -> dict:
        prefix = join_steps(pair["prefix"], delimiter) + delimiter if pair["prefix"] else ""
        return {
            "prompt": template(pair["prompt"]) + prefix,
            "chosen": pair["chosen"],
            "rejected": pair["rejected"],
        }

    return pairs.map(row, remove_columns=pairs.column_names)
