"""The ``llmac`` command: ``llmac [--debug] [--verbose] <subcommand> [--config recipe.yaml] [--field value ...]``.

Errors llmac raises on purpose (:class:`~llmac.errors.LlmacError`) end the command with one line on
stderr (what, where, how to fix) and exit status 1; ``--debug`` or ``LLMAC_DEBUG=1`` keeps their
traceback. Anything else is a bug and keeps its traceback. Input paths given on the command line or
in the recipe are checked before the subcommand's heavy imports, so a mistyped folder fails at once.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

from llmac.errors import ConfigError, InputNotFoundError, LlmacError
from llmac.paths import check_input_path, check_model_path

# subcommand -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sft": ("llmac.sft", "main", "warm-start an actor on reference solutions (TRL SFTTrainer)"),
    "generate": ("llmac.generate", "generate_main", "sample verified rollouts into a datasets folder"),
    "eval": ("llmac.generate", "eval_main", "pass@1, pass@k and maj@k of an actor on a task"),
    "critic": ("llmac.critic.cli", "main", "step critic: label | train | eval | score | inspect"),
    "ppo": ("llmac.ppo.trainer", "main", "PPO with a step-level critic (vLLM rollouts, DeepSpeed)"),
    "dapo": ("llmac.dapo.cli", "main", "Direct Advantage Policy Optimization (Skywork): build | train"),
    "critique": ("llmac.critique.cli", "main", "critique models: sft|train|refine|eval|self-train|inspect"),
    "mcts": ("llmac.mcts.cli", "main", "tree search over steps: build | solve | view | iterate"),
    "export": ("llmac.hub", "main", "make a model or dataset Hub-ready (safetensors, card), optionally push"),
    "import-gguf": ("llmac.gguf_import", "main", "a GGUF checkpoint as a checked from_pretrained folder"),
    "plot": ("llmac.plot", "main", "PNG training curves of a run folder (metrics.jsonl)"),
    "serve": ("llmac.engines.server", "main", "a vLLM rollout server for `engine: remote` trainers (HTTP)"),
    "demo": ("llmac.demo", "main", "CPU demo: SFT, MC step labels, step critic, PPO; DAPO, critique, MCTS"),
}

GLOBAL_FLAGS = {
    "--debug": "keep the traceback of llmac's own errors (also LLMAC_DEBUG=1)",
    "--verbose": "show third-party INFO logs, warnings and progress bars (also LLMAC_VERBOSE=1)",
}

# Config fields that name something to read, and what it should be. Checked before the subcommand
# runs, from the recipe and the flags alike (a later flag overrides the recipe, as in TrlParser).
INPUT_FIELDS: dict[str, str] = {
    "model_name_or_path": "model folder",
    "init_from": "model folder",
    "value_model": "critic folder",
    "process_reward_model": "critic folder",
    "critic": "critic folder",
    "source": "model or dataset folder",
    "train_data": "dataset",
    "eval_data": "dataset",
    "data": "dataset",
    "labels": "dataset",
    "rollouts": "dataset",
    "solutions": "dataset",
    "train_path": "data file",
    "eval_path": "data file",
    "ppo_recipe": "recipe file",
    "gguf": "GGUF file",
    "actor": "model folder",
    "reference_model": "model folder",
    "critic_init": "model folder",
}


MODEL_KINDS = ("model folder", "critic folder")


class UsageError(LlmacError, ValueError):
    """The command line itself is wrong: an unknown command or a missing argument."""


def usage(prog: str, commands: dict[str, tuple[str, str, str]]) -> str:
    flags = " [--debug] [--verbose]" if prog == "llmac" else ""
    lines = [f"usage: {prog}{flags} <command> [--config RECIPE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in commands.items()]
    if prog == "llmac":
        lines += ["", "options:"] + [f"  {flag:<10} {help_}" for flag, help_ in GLOBAL_FLAGS.items()]
    lines += ["", f"`{prog} <command> --help` lists the command's fields."]
    return "\n".join(lines)


def dispatch(prog: str, commands: dict[str, tuple[str, str, str]], argv: list[str]) -> None:
    """Run the command ``argv[0]`` names with the rest of ``argv``; print usage for none or --help."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog, commands))
        return
    name, rest = argv[0], argv[1:]
    if name not in commands:
        raise UsageError(
            f"{prog}: unknown command {name!r}; the commands are {', '.join(commands)} "
            f"(`{prog} --help` describes them)"
        )
    module, function, _ = commands[name]
    getattr(importlib.import_module(module), function)(rest)


# ---------------------------------------------------------------------------------- input paths


def field_values(argv: Sequence[str]) -> dict[str, str]:
    """``--field value`` / ``--field=value`` pairs of ``argv``, the last one winning."""
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if eq:
            values[name] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            values[name] = argv[i + 1]
    return values


def recipe_values(path: str) -> dict:
    """The top-level fields of the YAML recipe at ``path`` (``--config``), checked to exist."""
    import yaml

    check_input_path(path, "recipe file", flag="config")
    if not Path(path).is_file():
        raise InputNotFoundError(f"--config {path}: no such recipe file; recipes/ lists the shipped ones")
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({one_line(error)})") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: a recipe is a YAML mapping of field: value lines")
    return loaded


def check_inputs(command: str, argv: Sequence[str]) -> None:
    """Raise :class:`InputNotFoundError` for the first input path (recipe or flag) that looks local but
    does not exist: a local folder is never sent to the Hub, and no model is loaded first."""
    if command == "plot":  # `llmac plot RUN [RUN ...]`: positional run folders; its flags take values
        for i, arg in enumerate(argv):
            after_flag = i > 0 and argv[i - 1].startswith("-") and "=" not in argv[i - 1]
            if not arg.startswith("-") and not after_flag:
                check_input_path(arg, "run folder")
        return
    flags = field_values(argv)
    recipe = recipe_values(flags["config"]) if "config" in flags else {}
    fields = {**recipe, **flags}
    inputs = {**INPUT_FIELDS, **({"gsm8k_dir": "GSM8K folder"} if fields.get("task") == "gsm8k" else {})}
    for name, what in inputs.items():
        value = fields.get(name)
        if not isinstance(value, str) or value in ("", "tiny", "none", "None", "null"):
            continue
        in_recipe = f"{flags['config']}: {name}:" if name not in flags else None
        check = check_model_path if what in MODEL_KINDS else check_input_path
        check(value, what, flag=name, source=in_recipe)


# ---------------------------------------------------------------------------------- output


def one_line(error: BaseException) -> str:
    """``error``'s message on one line: its first line, then any listed details joined by '; '."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return " ".join([lines[0], "; ".join(lines[1:])]).strip()


def command_name(argv: Sequence[str]) -> str:
    """``llmac critic train`` for ``["critic", "train", ...]``: the words before the first flag."""
    words = []
    for arg in argv[:2]:
        if arg.startswith("-") or (words and words[0] not in ("critic", "dapo", "critique", "mcts")):
            break
        words.append(arg)
    return " ".join(["llmac", *words])


def configure_logging(verbose: bool) -> None:
    """llmac's own INFO lines always; third-party INFO lines, warnings and progress bars (but the
    training bar) only when verbose."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("llmac").setLevel(logging.INFO)
    # vLLM reads these when it is imported; a user's own setting wins.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU allocator and block-size hints
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # datasets' per-map bars, transformers' weight loading/writing bars; training keeps its own bar
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _exit_on_sigterm(signum, frame) -> None:
    # SIGTERM would end the process without unwinding; as SystemExit, `finally` blocks and exit
    # handlers run, so a vLLM engine shuts its worker processes down instead of orphaning them.
    sys.exit(128 + signum)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def split_global_flags(argv: list[str]) -> tuple[set[str], list[str]]:
    """The global flags given (before the command, or bare anywhere) and the remaining arguments.

    A bare ``--debug`` after the command is taken too: ``TrainingArguments.debug`` needs a value.
    """
    given, rest = set(), []
    for i, arg in enumerate(argv):
        bare = i + 1 == len(argv) or argv[i + 1].startswith("-")
        if arg in GLOBAL_FLAGS and (bare or not rest):
            given.add(arg)
        else:
            rest.append(arg)
    return given, rest


def main(argv: Sequence[str] | None = None) -> None:
    flags, argv = split_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in flags or _env_flag("LLMAC_DEBUG")
    verbose = "--verbose" in flags or _env_flag("LLMAC_VERBOSE")
    if verbose:
        os.environ["LLMAC_VERBOSE"] = "1"  # for the subcommand and the processes it starts
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    configure_logging(verbose)
    try:
        if argv and argv[0] in COMMANDS and "--help" not in argv and "-h" not in argv:
            check_inputs(argv[0], argv[1:])
        dispatch("llmac", COMMANDS, argv)
    except LlmacError as error:
        if debug:
            raise
        message = one_line(error)
        prog = command_name(argv)
        print(message if message.startswith("llmac") else f"{prog}: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
