"""``llmac dapo build | train``: Direct Advantage Policy Optimization (Skywork, arXiv 2412.18279)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "build": (
        "llmac.dapo.build",
        "main",
        "states, candidate steps and their MC values from the reference policy",
    ),
    "train": ("llmac.dapo.trainer", "main", "fit the actor to the step advantages (offline; --rounds R)"),
}


def main(argv: Sequence[str] | None = None) -> None:
    from llmac.cli import dispatch

    dispatch("llmac dapo", SUBCOMMANDS, list(sys.argv[1:] if argv is None else argv))
