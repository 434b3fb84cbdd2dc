"""``llmac mcts build | solve | view``: tree search over steps from the command line.

Each subcommand fills its config dataclasses from ``--config recipe.yaml`` and ``--field value``
flags; outputs are written atomically, and ``build``/``solve`` resume a killed run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "build": (
        "llmac.mcts.build",
        "main",
        "search trees on a task's questions; trees + value labels, pairs, solutions (--exports)",
    ),
    "solve": ("llmac.mcts.solve", "main", "answer questions by search guided by the critic alone; accuracy"),
    "view": (
        "llmac.mcts.viewer",
        "main",
        "one HTML page per tree: values as colours, the chosen path marked",
    ),
    "iterate": (
        "llmac.mcts.expert_iteration",
        "main",
        "expert iteration: search the RL problems, SFT the actor on the verified solutions, repeat",
    ),
}


def main(argv: Sequence[str] | None = None) -> None:
    from llmac.cli import dispatch

    dispatch("llmac mcts", SUBCOMMANDS, list(sys.argv[1:] if argv is None else argv))
