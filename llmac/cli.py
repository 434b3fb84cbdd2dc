"""The ``llmac`` command: ``llmac <subcommand> [--config recipe.yaml] [--field value ...]``."""

from __future__ import annotations

import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sft": ("llmac.sft", "main", "warm-start an actor on reference solutions (TRL SFTTrainer)"),
    "generate": ("llmac.generate", "generate_main", "sample verified rollouts into a datasets folder"),
    "eval": ("llmac.generate", "eval_main", "pass@1, pass@k and maj@k of an actor on a task"),
    "critic": ("llmac.critic.cli", "main", "step critic: label | train | eval | score | inspect"),
    "ppo": ("llmac.ppo.trainer", "main", "PPO with a step-level critic (vLLM rollouts, DeepSpeed)"),
    "export": ("llmac.hub", "main", "make a model or dataset Hub-ready (safetensors, card), optionally push"),
    "plot": ("llmac.plot", "main", "PNG training curves of a run folder (metrics.jsonl)"),
    "demo": ("llmac.demo", "main", "the CPU demo: SFT -> MC labels -> step critic -> evaluation"),
}


def usage(prog: str, commands: dict[str, tuple[str, str, str]]) -> str:
    lines = [f"usage: {prog} <command> [--config RECIPE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in commands.items()]
    lines += ["", f"`{prog} <command> --help` lists the command's fields."]
    return "\n".join(lines)


def dispatch(prog: str, commands: dict[str, tuple[str, str, str]], argv: list[str]) -> None:
    """Run the command ``argv[0]`` names with the rest of ``argv``; print usage for none or --help."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog, commands))
        return
    name, rest = argv[0], argv[1:]
    if name not in commands:
        sys.exit(f"{prog}: unknown command {name!r}\n\n{usage(prog, commands)}")
    module, function, _ = commands[name]
    getattr(importlib.import_module(module), function)(rest)


def _exit_on_sigterm(signum, frame) -> None:
    # SIGTERM would end the process without unwinding; as SystemExit, `finally` blocks and exit
    # handlers run, so a vLLM engine shuts its worker processes down instead of orphaning them.
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dispatch("llmac", COMMANDS, argv)


if __name__ == "__main__":
    main()
