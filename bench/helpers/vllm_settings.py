"""The vLLM engine settings a rollout bench can vary: prefix caching and the KV cache's size."""

from __future__ import annotations

import argparse


def add_vllm_args(parser: argparse.ArgumentParser) -> None:
    """``--prefix-caching/--no-prefix-caching`` and ``--kv-cache-gib``."""
    parser.add_argument(
        "--prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vLLM's prefix cache (on, as in training; off to measure what it is worth).",
    )
    parser.add_argument(
        "--kv-cache-gib",
        type=float,
        default=None,
        help="vLLM's KV cache in GiB (default: the engine's, 1 GiB on CPU); too small for the batch "
        "and vLLM preempts and recomputes sequences.",
    )


def vllm_kwargs(args: argparse.Namespace) -> dict:
    """``VLLMEngine`` keyword arguments of the settings above."""
    return {"enable_prefix_caching": args.prefix_caching, "kv_cache_gib": args.kv_cache_gib}
