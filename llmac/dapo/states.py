"""From sampled solutions to DAPO's states and candidate next steps. Pure.

A solution's clean steps ``a_0 .. a_{T-1}`` visit the states ``s_t = (a_0 .. a_{t-1})`` and take the
candidate ``a_t`` there. A candidate is keyed by its state, its text and whether it ends the solution
(ending there and going on are different actions): identical candidates of several solutions are one
node, valued once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

State = tuple[str, ...]


@dataclass(frozen=True)
class Node:
    """One candidate step at one state."""

    state: State
    step: str
    last: bool  # the step ends its solution (its value is the solution's verified outcome)


def balanced_subset(correct: Sequence[bool], keep: int) -> list[int]:
    """Indices of at most ``keep`` solutions, half correct and half wrong where both are there.

    When one kind is short, the other fills the rest (the paper keeps 6 of 32, balanced). The first
    ones of each kind are taken, so the subset is a function of the sample order.
    """
    right = [i for i, c in enumerate(correct) if c]
    wrong = [i for i, c in enumerate(correct) if not c]
    take_right = min(len(right), max(keep // 2, keep - len(wrong)))
    take_wrong = min(len(wrong), keep - take_right)
    return sorted(right[:take_right] + wrong[:take_wrong])


def solution_nodes(steps: Sequence[str]) -> list[Node]:
    """The node each step of a solution takes, in order."""
    return [Node(tuple(steps[:t]), step, t == len(steps) - 1) for t, step in enumerate(steps)]


def unique_nodes(solutions: Sequence[Sequence[str]]) -> list[Node]:
    """Every node the solutions take, once, in order of first appearance."""
    seen: dict[Node, None] = {}
    for steps in solutions:
        for node in solution_nodes(steps):
            seen.setdefault(node)
    return list(seen)


def group_by_state(nodes: Sequence[Node]) -> dict[State, list[int]]:
    """Indices (into ``nodes``) of the candidates of each state, states in order of first appearance."""
    states: dict[State, list[int]] = {}
    for index, node in enumerate(nodes):
        states.setdefault(node.state, []).append(index)
    return states


def visit_counts(solutions: Sequence[Sequence[str]], nodes: Sequence[Node]) -> list[int]:
    """How many of the solutions take each node."""
    index = {node: i for i, node in enumerate(nodes)}
    counts = [0] * len(nodes)
    for steps in solutions:
        for node in solution_nodes(steps):
            counts[index[node]] += 1
    return counts
