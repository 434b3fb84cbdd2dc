"""Search trees over steps: a node is a step prefix, an edge one step.

Values. Every node keeps ``visits`` and ``value_sum``; its value ``q`` is their mean (0 before any
visit). :meth:`Tree.backup` adds one evaluation to a node and every ancestor, so a node's ``q`` is the
mean of all evaluations made at or below it. Values live on one of two scales, fixed per tree:

- ``"pm1"`` (ReST-MCTS*, rStar-Math): a verified correct terminal is ``+1``, a wrong one ``-1``; a
  leaf evaluated as P(correct) = p is worth ``2p - 1``.
- ``"01"``: correct ``1``, wrong ``0``; a leaf worth p is ``p`` (the scale of critic labels).

Terminals. A node is terminal when its step ended the response (EOS, or ``max_new_tokens`` hit inside
the step), when it sits at ``max_depth`` or when none of its step samples had visible text; its text is then verified once and the verdict is kept
(``reward``, ``correct``). Width. A node has at most ``max_children`` children, one per distinct step
(whitespace-insensitive); each child's ``prior`` is the share of the step samples that produced it.

Without a verifier (test-time search, ``llmac mcts solve``), a terminal is valued once by the leaf
evaluator instead (``evaluation``, on the tree's scale) and backs that value up whenever it is
selected again; ``reward``/``correct`` stay None.

Records. :func:`tree_to_record` flattens a tree into one JSON-able row (its nodes depth first, each
with its parent's index; the root is node 0) and :func:`tree_from_record` rebuilds it exactly, so
trees are kept as a ``datasets`` dataset (``llmac mcts build``) and loaded back for exports.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from llmac.mcts.select import ChildStats, select_child

VALUE_SCALES = ("pm1", "01")


def terminal_value(correct: bool, scale: str) -> float:
    """The value of a verified terminal: ``+1``/``-1`` on ``"pm1"``, ``1``/``0`` on ``"01"``."""
    check_scale(scale)
    if correct:
        return 1.0
    return -1.0 if scale == "pm1" else 0.0


def from_probability(p: float, scale: str) -> float:
    """A P(correct) estimate in [0, 1] as a value on ``scale``."""
    check_scale(scale)
    return 2.0 * p - 1.0 if scale == "pm1" else p


def to_probability(value: float, scale: str) -> float:
    """Inverse of :func:`from_probability`: a value on ``scale`` as a number in [0, 1]."""
    check_scale(scale)
    return (value + 1.0) / 2.0 if scale == "pm1" else value


def check_scale(scale: str) -> None:
    if scale not in VALUE_SCALES:
        raise ValueError(f"value scale must be one of {VALUE_SCALES}, got {scale!r}")


def step_key(text: str) -> str:
    """What makes two sampled steps the same child: their text with whitespace runs collapsed."""
    return " ".join(text.split())


@dataclass
class StepSample:
    """One sampled candidate step, as the engine gave it."""

    text: str
    token_ids: list[int]
    ends_response: bool  # EOS or max_new_tokens inside the step: nothing can follow it


@dataclass(eq=False)
class Node:
    """A step prefix; ``text``/``token_ids`` are the step on the edge from the parent ("" at the root)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    parent: Node | None = None
    depth: int = 0
    prior: float = 1.0
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    terminal: bool = False
    reward: float | None = None  # the verifier's reward of a terminal
    correct: bool | None = None  # reward >= the correct threshold, for a terminal
    evaluation: float | None = None  # a terminal's value from the leaf evaluator (no verifier)

    @property
    def q(self) -> float:
        """Mean backed-up value (0 before the first visit)."""
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def expanded(self) -> bool:
        return bool(self.children)

    def path(self) -> list[Node]:
        """The nodes from the root's first child down to this one (empty for the root)."""
        nodes, node = [], self
        while node.parent is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]

    def prefix_text(self) -> str:
        """The response so far: the texts of every step on the path, as generated."""
        return "".join(n.text for n in self.path())

    def prefix_ids(self) -> list[int]:
        """The generated token ids of the response so far (continue exactly where the samples left off)."""
        return [t for n in self.path() for t in n.token_ids]

    def steps(self) -> list[str]:
        """The path's steps, stripped (the Math-Shepherd/PRM layout)."""
        return [n.text.strip() for n in self.path()]

    def walk(self) -> Iterator[Node]:
        """This node and its descendants, depth first, children in order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def has_correct_terminal(self) -> bool:
        """Whether a verified correct terminal lies at or below this node."""
        return any(n.terminal and n.correct for n in self.walk())


@dataclass(eq=False)
class Tree:
    """The search tree of one question."""

    question: str
    answer: str
    prompt: str  # the question as the engine reads it (chat-templated)
    scale: str = "pm1"
    max_depth: int = 16
    max_children: int = 4
    root: Node = field(default_factory=Node)
    # What growing this tree cost: step samples drawn, their tokens, and leaf-rollout tokens.
    step_samples: int = 0
    step_tokens: int = 0
    rollout_tokens: int = 0

    def __post_init__(self) -> None:
        check_scale(self.scale)
        if self.max_depth < 1 or self.max_children < 1:
            raise ValueError(
                f"max_depth and max_children must be >= 1, got {self.max_depth}, {self.max_children}"
            )

    def select_leaf(self, rule: str, c: float) -> Node:
        """Descend from the root by ``rule`` to a node that is terminal or not expanded yet."""
        node = self.root
        while node.expanded and not node.terminal:
            stats = [ChildStats(ch.q, ch.visits, ch.prior) for ch in node.children]
            node = node.children[select_child(stats, node.visits, rule, c)]
        return node

    def expand(self, node: Node, samples: Sequence[StepSample]) -> list[Node]:
        """Add one child per distinct sampled step (at most ``max_children``, most sampled first).

        A sample with no visible text that does not end the response is not a step and is dropped
        (it still counts in the priors' denominator); if every sample is one, ``node`` becomes a
        terminal, to be verified as it is.
        """
        if node.terminal or node.expanded:
            raise ValueError("only an unexpanded, non-terminal node can be expanded")
        if not samples:
            raise ValueError("expansion needs at least one sampled step")
        groups: dict[str, list[StepSample]] = {}
        for sample in samples:
            if sample.ends_response or sample.text.strip():  # whitespace alone is no step (llmac.steps)
                groups.setdefault(step_key(sample.text), []).append(sample)
        if not groups:
            node.terminal = True  # no sample continued with a visible step: the response ends here
            return []
        ranked = sorted(groups.values(), key=len, reverse=True)[: self.max_children]  # stable on ties
        for group in ranked:
            first = group[0]
            child = Node(
                text=first.text,
                token_ids=list(first.token_ids),
                parent=node,
                depth=node.depth + 1,
                prior=len(group) / len(samples),
            )
            child.terminal = first.ends_response or child.depth >= self.max_depth
            node.children.append(child)
        return node.children

    def backup(self, node: Node, value: float) -> None:
        """Add one evaluation ``value`` to ``node`` and every ancestor up to the root."""
        while node is not None:
            node.visits += 1
            node.value_sum += value
            node = node.parent

    def set_verdict(self, node: Node, reward: float, correct: bool) -> float:
        """Record a terminal's verification; returns its value on this tree's scale."""
        if not node.terminal:
            raise ValueError("only a terminal node has a verdict")
        node.reward, node.correct = reward, correct
        return terminal_value(correct, self.scale)

    def terminal_value(self, node: Node) -> float:
        """The value a terminal backs up: its verdict's, else its evaluation (0 before either)."""
        if not node.terminal:
            raise ValueError("only a terminal node has a terminal value")
        if node.correct is not None:
            return terminal_value(node.correct, self.scale)
        return node.evaluation if node.evaluation is not None else 0.0

    @property
    def generated_tokens(self) -> int:
        """Every token generated for this tree: step samples and leaf rollouts."""
        return self.step_tokens + self.rollout_tokens

    def most_visited_path(self) -> list[Node]:
        """From the root, the most visited child at each level (ties: higher q, then earlier)."""
        path, node = [], self.root
        while node.children:
            node = max(node.children, key=lambda ch: (ch.visits, ch.q, -node.children.index(ch)))
            path.append(node)
        return path

    def nodes(self) -> Iterator[Node]:
        """Every node but the root, depth first."""
        it = self.root.walk()
        next(it)
        yield from it


# -- records ---------------------------------------------------------------------------------------
NODE_FIELDS = ("parent", "text", "token_ids", "prior", "visits", "value_sum", "terminal", "reward",
               "correct", "evaluation")  # fmt: skip
TREE_FIELDS = ("question", "answer", "prompt", "scale", "max_depth", "max_children", "step_samples",
               "step_tokens", "rollout_tokens")  # fmt: skip


def tree_to_record(tree: Tree) -> dict:
    """The tree as one row: its own fields, then ``node_<field>`` lists over its nodes depth first."""
    nodes = list(tree.root.walk())
    index = {id(node): i for i, node in enumerate(nodes)}
    record = {name: getattr(tree, name) for name in TREE_FIELDS}
    record["node_parent"] = [-1 if n.parent is None else index[id(n.parent)] for n in nodes]
    for name in NODE_FIELDS[1:]:
        values = [getattr(n, name) for n in nodes]
        record[f"node_{name}"] = [list(v) for v in values] if name == "token_ids" else values
    return record


def tree_from_record(record: dict) -> Tree:
    """The tree :func:`tree_to_record` wrote (extra keys of the row are ignored)."""
    tree = Tree(**{name: record[name] for name in TREE_FIELDS})
    nodes: list[Node] = []
    for i, parent in enumerate(record["node_parent"]):
        fields = {name: record[f"node_{name}"][i] for name in NODE_FIELDS[1:]}
        fields["token_ids"] = list(fields["token_ids"])
        if parent < 0:
            if i != 0:
                raise ValueError(f"tree record: node {i} has no parent; only node 0 (the root) may")
            node = tree.root
            for name, value in fields.items():
                setattr(node, name, value)
        else:
            if not 0 <= parent < i:
                raise ValueError(f"tree record: node {i}'s parent {parent} does not come before it")
            node = Node(**fields, parent=nodes[parent], depth=nodes[parent].depth + 1)
            nodes[parent].children.append(node)
        nodes.append(node)
    return tree
