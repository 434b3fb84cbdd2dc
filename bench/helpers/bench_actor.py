"""What every bench shares: the tiny actor it measures, built and briefly trained in a temp folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmac.data import arithmetic_dataset
from llmac.models import TinyModelConfig, warm_tiny_actor


def add_actor_args(parser: argparse.ArgumentParser, train_steps: int) -> None:
    """``--hidden-size``, ``--layers``, ``--train-steps`` and ``--seed``."""
    parser.add_argument("--hidden-size", type=int, default=128, help="Tiny model width.")
    parser.add_argument("--layers", type=int, default=2, help="Tiny model layers.")
    parser.add_argument(
        "--train-steps", type=int, default=train_steps, help="Next-token steps before benchmarking."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the model, its training and the data.")


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
