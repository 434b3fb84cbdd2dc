"""``llmac critique sft | train | refine | eval | self-train | inspect``: the generative critic's command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "sft": (
        "llmac.critique.sft",
        "main",
        "critiques of the actor's solutions by the oracle, then SFT of the critic",
    ),
    "train": ("llmac.critique.trainer", "main", "Critique-RL: stage I (verdicts) or II (refinements), RLOO"),
    "refine": ("llmac.critique.evaluate", "refine_main", "critique -> refine the actor's held-out answers"),
    "eval": ("llmac.critique.evaluate", "eval_main", "Acc@Dis, first-error F1, best-of-N by verdict, refine"),
    "self-train": (
        "llmac.critique.self_training",
        "main",
        "critique-in-the-loop self-training: sample, critique, refine, keep the correct, re-SFT the actor",
    ),
    "inspect": ("llmac.critique.inspector", "main", "an HTML page of each critique beside its solution"),
}


def main(argv: Sequence[str] | None = None) -> None:
    from llmac.cli import dispatch

    dispatch("llmac critique", SUBCOMMANDS, list(sys.argv[1:] if argv is None else argv))
