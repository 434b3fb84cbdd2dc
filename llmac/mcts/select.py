"""Child selection scores (pure): UCT and PUCT over a node's children, unvisited children first.

With ``Q`` a child's mean backed-up value, ``N`` its visits, ``N_p`` its parent's visits, ``P`` its
prior (the share of the parent's ``b`` step samples that produced it) and ``c`` the exploration
constant:

- UCT (rStar-Math, c = 2):   ``Q + c * sqrt(ln N_p / N)``
- PUCT (AlphaZero):          ``Q + c * P * sqrt(N_p) / (1 + N)``

A child never visited scores ``+inf`` under both rules, so every child is tried once before any is
tried twice; ties (several unvisited children, or equal scores) go to the higher prior, then to the
earlier child.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SELECTION_RULES = ("uct", "puct")


@dataclass(frozen=True)
class ChildStats:
    """What selection reads of one child."""

    q: float
    visits: int
    prior: float = 1.0


def uct_score(q: float, visits: int, parent_visits: int, c: float) -> float:
    """``Q + c sqrt(ln N_p / N)``; ``+inf`` for an unvisited child."""
    if visits == 0:
        return math.inf
    return q + c * math.sqrt(math.log(max(parent_visits, 1)) / visits)


def puct_score(q: float, visits: int, parent_visits: int, prior: float, c: float) -> float:
    """``Q + c P sqrt(N_p) / (1 + N)``; ``+inf`` for an unvisited child."""
    if visits == 0:
        return math.inf
    return q + c * prior * math.sqrt(parent_visits) / (1 + visits)


def selection_scores(children: Sequence[ChildStats], parent_visits: int, rule: str, c: float) -> list[float]:
    """The score of every child under ``rule`` (``"uct"`` or ``"puct"``)."""
    if rule == "uct":
        return [uct_score(ch.q, ch.visits, parent_visits, c) for ch in children]
    if rule == "puct":
        return [puct_score(ch.q, ch.visits, parent_visits, ch.prior, c) for ch in children]
    raise ValueError(f"selection rule must be one of {SELECTION_RULES}, got {rule!r}")


def select_child(children: Sequence[ChildStats], parent_visits: int, rule: str, c: float) -> int:
    """Index of the child to descend into: highest score, then highest prior, then first."""
    if not children:
        raise ValueError("a node with no children has nothing to select")
    scores = selection_scores(children, parent_visits, rule, c)
    return max(range(len(children)), key=lambda i: (scores[i], children[i].prior, -i))
