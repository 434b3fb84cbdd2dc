"""What every bench shares: the actor it measures and the arithmetic task it measures it on.

By default that is llmac's tiny actor, built and briefly trained in a temp folder, on bare
expressions (its character tokenizer). With ``--model PATH`` it is a real model's ``from_pretrained``
folder (e.g. SmolLM2-135M-Instruct, which ``make smollm2`` imports), asked reasoning-gym's English
questions through its chat template, and the figures go to their own results file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmac.data import ArithmeticTaskConfig, arithmetic_dataset
from llmac.models import TinyModelConfig, warm_tiny_actor


def model_folder(value: str) -> Path:
    """``--model``'s type: a folder with a ``config.json`` (a ``from_pretrained`` folder)."""
    path = Path(value).expanduser()
    if not (path / "config.json").is_file():
        raise argparse.ArgumentTypeError(
            f"{path} is not a from_pretrained model folder (no config.json); "
            "`make smollm2` imports SmolLM2-135M-Instruct into ~/.cache/llmac/smollm2/"
        )
    return path


def add_actor_args(parser: argparse.ArgumentParser, train_steps: int) -> None:
    """``--model``, and for the tiny actor ``--hidden-size``, ``--layers``, ``--train-steps``; ``--seed``."""
    parser.add_argument(
        "--model",
        type=model_folder,
        default=None,
        help="A real model's from_pretrained folder to measure instead of the tiny actor (not trained; "
        "figures go to bench/results/<bench>-<model>[-quick].json).",
    )
    parser.add_argument("--hidden-size", type=int, default=128, help="Tiny model width.")
    parser.add_argument("--layers", type=int, default=2, help="Tiny model layers.")
    parser.add_argument(
        "--train-steps", type=int, default=train_steps, help="Next-token steps before benchmarking."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model, its training and the data.")


def model_label(path: Path) -> str:
    """The short name a real model's results file carries: ``SmolLM2-135M-Instruct`` -> ``smollm2``."""
    return path.resolve().name.split("-")[0].lower()


def bench_name(name: str, args: argparse.Namespace) -> str:
    """``name`` for the tiny actor, ``name-<model label>`` for ``--model``: their results never mix."""
    return name if args.model is None else f"{name}-{model_label(args.model)}"


def arithmetic_task(args: argparse.Namespace, **sizes) -> ArithmeticTaskConfig:
    """The chain-sum task: bare expressions for the tiny actor, the English question for a real model."""
    return ArithmeticTaskConfig(instruction=args.model is not None, **sizes)


def actor_folder(tmp: Path, args: argparse.Namespace) -> Path:
    """The folder of the actor to measure: ``--model`` as it is, else the tiny actor built in ``tmp``."""
    if args.model is not None:
        return args.model
    return build_actor(tmp / "tiny", args)


def actor_description(args: argparse.Namespace) -> str:
    """What the printed workload calls the actor."""
    if args.model is not None:
        return f"model {args.model.resolve().name}"
    return f"tiny actor (hidden {args.hidden_size}, {args.layers} layers)"


def build_actor(model_dir: Path, args: argparse.Namespace) -> Path:
    """The tiny actor ``args`` describe, warm-started on arithmetic solutions; prints how long it took."""
    started = time.perf_counter()
    rows = arithmetic_dataset(512, seed=args.seed + 1)
    size = TinyModelConfig(
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        intermediate_size=4 * args.hidden_size,
        seed=args.seed,
    )
    warm_tiny_actor(rows["question"], rows["solution"], model_dir, args.train_steps, size)
    print(f"trained the tiny actor for {args.train_steps} steps in {time.perf_counter() - started:.1f}s")
    return model_dir
