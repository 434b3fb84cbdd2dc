"""Critic scoring: one forward pass per solution against one forward pass per step prefix.

Both methods score the same encoded arithmetic solutions with the same critic: ``single_pass``
reads every step's value from one pass over question + solution (what ``score_examples`` does),
``per_prefix`` runs question + steps ``0..t`` once per step ``t`` and reads its last token (how PRMs
are often applied). Both are batched by tokens, not rows: sequences sorted by length go into
forward passes of at most ``--batch-tokens`` tokens once padded, so each pass does about the same
work and the per-prefix method's many short rows do not also pay for many more calls; the ratio
measures the work (tokens through the model), and the two token counts are printed beside it. Both
run the same function (:func:`llmac.critic.scoring.score_examples`), one call per batch.

The critic is ``init_critic`` on llmac's tiny actor (a few next-token steps, which only make it a
realistic checkpoint; training does not change the timing) with a random value head, scaled so its
logits have mean 0 and spread 1 on a few solutions, so values vary. The two methods must agree
within 1e-4 (the script exits non-zero otherwise). Each method gets a warm-up call, then timed calls
alternate and each method's best run counts (the 2 cores are shared, so single runs are noisy).
Building the model and encoding are not timed. The figures and the command go to
``bench/results/critic_scoring[-quick].json``; the last line printed is ``ratio=<per_prefix_time /
single_pass_time> token_ratio=<per_prefix_tokens / single_pass_tokens> ...``.

Default problems have 6-8 numbers: 5-7 operations, so 6-8 steps with the ``Answer:`` line. When other
jobs load the CPU, torch's default threads spin against them and every time grows many-fold (the ratio
barely moves); ``--threads 1`` keeps the run short.

With ``--model PATH`` the critic is ``init_critic`` on a real model's folder (e.g. SmolLM2-135M-Instruct
from ``make smollm2``: ``LlamaForTokenClassification``), the gold solutions follow reasoning-gym's
English questions in its chat template, and the figures go to
``bench/results/critic_scoring-<model>[-quick].json``.

    python bench/critic_scoring.py --quick
    python bench/critic_scoring.py --model ~/.cache/llmac/smollm2/SmolLM2-135M-Instruct --completions 16 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from helpers.bench_actor import actor_description, actor_folder, add_actor_args, arithmetic_task, bench_name
from helpers.results import BenchRecord, add_results_arg, summary_line
from helpers.token_batches import padded_tokens, token_batches

from llmac.critic.model import critic_delimiter, init_critic, load_critic_tokenizer
from llmac.critic.scoring import CriticExample, encode_example, score_examples
from llmac.data import arithmetic_dataset

TOLERANCE = 1e-4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="Fewer completions and repeats (under a minute)."
    )
    parser.add_argument(
        "--completions", type=int, default=None, help="Solutions to score (default 256, quick 64)."
    )
    parser.add_argument(
        "--min-terms", type=int, default=6, help="Fewest numbers per problem (steps = terms)."
    )
    parser.add_argument("--max-terms", type=int, default=8, help="Most numbers per problem.")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=4096,
        help="Tokens per forward pass, padding included (both methods).",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="Timed calls per method (default 5, quick 3)."
    )
    add_actor_args(parser, train_steps=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)."
    )
    add_results_arg(parser)
    return parser.parse_args()


@torch.no_grad()
def randomize_head(model: torch.nn.Module, examples: list[CriticExample], seed: int) -> None:
    """A random value head, scaled and shifted so its logits on ``examples`` have mean 0 and std 1.

    A plain random head is not enough: hidden states share a large common component, so on wider
    backbones every value would sit within a few thousandths of the same number.
    """
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.cat(
        [model.model(input_ids=torch.tensor([ex.input_ids])).last_hidden_state[0] for ex in examples]
    )
    direction = torch.randn(hidden.shape[1], generator=generator)
    logits = hidden @ direction
    model.score.weight.copy_((direction / logits.std())[None])
    model.score.bias.fill_(-(logits.mean() / logits.std()).item())


def prefix_examples(examples: list[CriticExample]) -> tuple[list[CriticExample], list[tuple[int, int]]]:
    """Every step prefix of ``examples`` as an example read at its last token, and its (example, step)."""
    prefixes, owners = [], []
    for i, ex in enumerate(examples):
        for t, end in enumerate(ex.step_positions):
            prefixes.append(CriticExample(input_ids=ex.input_ids[: end + 1], step_positions=[end]))
            owners.append((i, t))
    return prefixes, owners


def score_in_batches(model, examples: list[CriticExample], batches: list[list[int]], pad_id: int):
    """``score_examples`` over ``batches`` of ``examples`` (one forward pass each), in input order."""
    values: list[list[float]] = [[] for _ in examples]
    for batch in batches:
        scored = score_examples(model, [examples[i] for i in batch], pad_id, batch_size=len(batch))
        for i, v in zip(batch, scored, strict=True):
            values[i] = v
    return values


def score_per_prefix(model, examples, prefixes, owners, batches, pad_id) -> list[list[float]]:
    """Per-prefix values regrouped per example (step order)."""
    values = [[0.0] * len(ex.step_positions) for ex in examples]
    for (i, t), (value,) in zip(owners, score_in_batches(model, prefixes, batches, pad_id), strict=True):
        values[i][t] = value
    return values


def timed(fn: Callable[[], list[list[float]]]) -> tuple[float, list[list[float]]]:
    start = time.perf_counter()
    values = fn()
    return time.perf_counter() - start, values


def max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    if [len(v) for v in a] != [len(v) for v in b]:
        raise AssertionError("the two methods returned different numbers of steps")
    return max(abs(x - y) for va, vb in zip(a, b, strict=True) for x, y in zip(va, vb, strict=True))


def main() -> None:
    args = parse_args()
    record = BenchRecord(bench_name("critic_scoring", args), args)
    wall = record.started
    if args.threads:
        torch.set_num_threads(args.threads)
    completions = args.completions or (64 if args.quick else 256)
    repeats = args.repeats or (3 if args.quick else 5)
    task = arithmetic_task(args, min_terms=args.min_terms, max_terms=args.max_terms)
    rows = arithmetic_dataset(completions, seed=args.seed + 1, config=task)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        model_dir = actor_folder(Path(tmp), args)
        critic = init_critic(model_dir)
        tokenizer = load_critic_tokenizer(model_dir)
        print(f"built the critic on the {actor_description(args)} in {time.perf_counter() - started:.1f}s")
    delimiter = critic_delimiter(critic)
    examples: list[CriticExample] = [
        encode_example(tokenizer, q, s, delimiter)
        for q, s in zip(rows["question"], rows["solution"], strict=True)
    ]
    randomize_head(critic, examples[:8], args.seed)
    pad_id = tokenizer.pad_token_id
    prefixes, owners = prefix_examples(examples)
    lengths = {
        "single_pass": [len(ex.input_ids) for ex in examples],
        "per_prefix": [len(p.input_ids) for p in prefixes],
    }
    batches = {name: token_batches(lens, args.batch_tokens) for name, lens in lengths.items()}
    methods = {
        "single_pass": lambda: score_in_batches(critic, examples, batches["single_pass"], pad_id),
        "per_prefix": lambda: score_per_prefix(
            critic, examples, prefixes, owners, batches["per_prefix"], pad_id
        ),
    }

    values: dict[str, list[list[float]]] = {}
    for name, fn in methods.items():
        seconds, values[name] = timed(fn)
        print(f"{name} warm-up call: {seconds:.2f}s")
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            seconds, _ = timed(fn)
            times[name].append(seconds)
            print(f"{name}: {seconds:.3f}s")

    steps = [len(ex.step_positions) for ex in examples]
    tokens = {name: sum(lens) for name, lens in lengths.items()}
    padded = {name: padded_tokens(lengths[name], batches[name]) for name in methods}
    parameters = sum(p.numel() for p in critic.parameters())
    print(
        f"workload: {len(examples)} completions, {sum(steps)} steps "
        f"(per completion min {min(steps)} / mean {statistics.mean(steps):.1f} / max {max(steps)}), "
        f"{tokens['single_pass']} tokens in full solutions, {tokens['per_prefix']} in step prefixes"
    )
    for name in methods:
        print(f"{name}: {len(batches[name])} forward passes of <= {args.batch_tokens} tokens, "
              f"{padded[name]} tokens computed (padding included)")  # fmt: skip
    print(
        f"critic: {parameters / 1e6:.2f}M parameters ({actor_description(args)}); "
        f"torch threads {torch.get_num_threads()}"
    )
    spread = [v for vs in values["single_pass"] for v in vs]
    print(f"values: min {min(spread):.3f}, max {max(spread):.3f}")
    best = {name: min(seconds) for name, seconds in times.items()}
    for name in methods:
        print(f"{name} best of {repeats}: {best[name]:.3f}s")
    difference = max_difference(values["single_pass"], values["per_prefix"])
    print(f"max |single_pass - per_prefix| = {difference:.2e}")
    print(f"wall time {time.perf_counter() - wall:.1f}s")
    if not difference < TOLERANCE:
        sys.exit(f"FAIL: the two methods' values differ by {difference:.2e} (tolerance {TOLERANCE:g})")
    figures = {
        "ratio": round(best["per_prefix"] / best["single_pass"], 2),
        "token_ratio": round(padded["per_prefix"] / padded["single_pass"], 2),
        "single_pass_s": round(best["single_pass"], 3),
        "per_prefix_s": round(best["per_prefix"], 3),
        "max_difference": float(f"{difference:.2e}"),
    }
    details = {"times": times, "padded_tokens": padded, "tokens": tokens,
               "forward_passes": {name: len(b) for name, b in batches.items()},
               "completions": len(examples), "steps": sum(steps), "parameters": parameters,
               "torch_threads": torch.get_num_threads()}  # fmt: skip
    print(f"results: {record.save(figures, details)}")
    print(summary_line(figures))


if __name__ == "__main__":
    main()
