"""Monte-Carlo step labelling (Math-Shepherd): VLLMEngine against HFEngine on the same solutions.

The model is llmac's tiny Qwen2 trained for a few dozen next-token steps on arithmetic solutions
(as in ``bench/rollout_throughput.py``). Solutions are sampled once (vLLM, one per question) and
both engines label them with :func:`llmac.critic.labelling.label_steps` under the same
:class:`MCLabelConfig` and the math reward: every step prefix continued ``N`` times, verified against
the gold. Each job is one engine call with every prefix of every solution. vLLM gets each prefix as
one request with ``n = N`` and shares prefixes through its prefix cache and continuous batching; HF
repeats each prefix ``N`` times and, as in ``bench/rollout_throughput.py``, gets its fastest CPU
setting there: all the job's sequences in one ``generate`` call (``--hf-batch-size`` to change it).
Each engine gets a warm-up job first; timed jobs alternate between the engines and an engine's time
is the sum over its jobs (HF's job time swings with the longest continuation of its static batch, so
a best-of-N figure would favour it). Training, sampling and start-up are not timed. ``--quick`` is
the small job (16 solutions, 64-token continuations, 3 timed jobs per engine); on cores busy with
other work HF's many small per-token ops slow down several-fold, so compare runs made on idle cores.
The figures and the command go to ``bench/results/mc_labelling[-quick].json``; the last line printed
is ``ratio=<hf/vllm> ...``.

With ``--model PATH`` a real model's folder (e.g. SmolLM2-135M-Instruct from ``make smollm2``) samples
and labels its own solutions to reasoning-gym's English questions, into
``bench/results/mc_labelling-<model>[-quick].json``; ``--no-prefix-caching`` turns vLLM's prefix
cache off to show what it is worth.

    python bench/mc_labelling.py --quick
    python bench/mc_labelling.py --model ~/.cache/llmac/smollm2/SmolLM2-135M-Instruct --solutions 3 --n 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from helpers.bench_actor import actor_description, actor_folder, add_actor_args, arithmetic_task, bench_name
from helpers.results import BenchRecord, add_results_arg, summary_line
from helpers.vllm_settings import add_vllm_args, vllm_kwargs

from llmac.critic.labelling import MCLabelConfig, label_steps
from llmac.data import arithmetic_dataset
from llmac.engines import SamplingConfig
from llmac.engines.hf import HFEngine
from llmac.rewards import math_rewards
from llmac.rollouts import sample_rollouts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Smaller job (16 solutions, 64 new tokens).")
    parser.add_argument(
        "--solutions", type=int, default=None, help="Solutions to label (default 48, quick 16)."
    )
    parser.add_argument("--n", type=int, default=8, help="Continuations per step prefix (N).")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="Token budget per continuation (default 96, quick 64).",
    )
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--repeats", type=int, default=None, help="Timed jobs per engine (default 3, quick 3)."
    )
    add_actor_args(parser, train_steps=40)
    add_vllm_args(parser)
    parser.add_argument(
        "--hf-batch-size",
        type=int,
        default=None,
        help="Sequences per HF generate (default: all of a job's, its fastest setting).",
    )
    add_results_arg(parser)
    return parser.parse_args()


def timed_labels(engine, solutions, config: MCLabelConfig):
    start = time.perf_counter()
    labels = label_steps(engine, solutions, config, math_rewards, progress=False)
    return time.perf_counter() - start, labels


def main() -> None:
    args = parse_args()
    record = BenchRecord(bench_name("mc_labelling", args), args)
    wall = record.started
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the figures readable
    from llmac.engines.vllm import VLLMEngine

    num_solutions = args.solutions or (16 if args.quick else 48)
    max_new_tokens = args.max_new_tokens or (64 if args.quick else 96)
    repeats = args.repeats or 3
    config = MCLabelConfig(
        num_rollouts=args.n,
        temperature=args.temperature,
        max_new_tokens=max_new_tokens,
        seed=args.seed,
        batch_size=num_solutions,  # one engine call per job
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = actor_folder(Path(tmp), args)

        started = time.perf_counter()
        vllm_engine = VLLMEngine(
            model_dir, dtype="float32", max_model_len=512, seed=args.seed, **vllm_kwargs(args)
        )
        print(f"vLLM engine started in {time.perf_counter() - started:.1f}s")
        hf_engine = None
        try:
            started = time.perf_counter()
            questions = arithmetic_dataset(
                num_solutions + 2, seed=args.seed + 2, config=arithmetic_task(args)
            )
            sampling = SamplingConfig(n=1, temperature=1.0, max_new_tokens=128, seed=args.seed)
            solutions = sample_rollouts(vllm_engine, questions, sampling, math_rewards, progress=False)
            warm_up, solutions = solutions.select(range(2)), solutions.select(range(2, len(solutions)))
            steps = [len(s) for s in solutions["steps"]]
            sequences = (sum(steps) - len(steps)) * args.n
            print(
                f"sampled {len(solutions)} solutions in {time.perf_counter() - started:.1f}s: "
                f"{sum(steps)} steps, {sum(steps) - len(steps)} prefixes to continue x N={args.n}, "
                f"{sum(solutions['reward']):.0f} correct"
            )
            hf_engine = HFEngine(model_dir, dtype="float32", batch_size=args.hf_batch_size or sequences)
            for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
                seconds, _ = timed_labels(engine, warm_up, config)
                print(f"{name} warm-up job (2 solutions): {seconds:.1f}s")
            times: dict[str, list[float]] = {"vllm": [], "hf": []}
            for _ in range(repeats):
                for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
                    seconds, labels = timed_labels(engine, solutions, config)
                    times[name].append(seconds)
                    soft = [m for row in labels["labels"] for m in row[:-1]]
                    print(
                        f"{name}: labelled {len(labels)} solutions in {seconds:.1f}s "
                        f"(mean soft label of sampled steps {sum(soft) / max(len(soft), 1):.3f})"
                    )
        finally:
            vllm_engine.close()

    total = {name: sum(values) for name, values in times.items()}
    best = {name: min(values) for name, values in times.items()}
    print(
        f"workload: {actor_description(args)}; {len(solutions)} solutions, N={args.n}, <= {max_new_tokens} new tokens per "
        f"continuation, temperature {args.temperature}; prefix caching {'on' if args.prefix_caching else 'off'}; HF batch {hf_engine.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    for name in ("vllm", "hf"):
        print(f"{name}: {total[name]:.1f}s over {repeats} jobs (best job {best[name]:.2f}s)")
    print(
        f"best-job ratio {best['hf'] / best['vllm']:.2f}; wall time after imports {time.perf_counter() - wall:.1f}s"
    )
    figures = {
        "ratio": round(total["hf"] / total["vllm"], 2),
        "best_job_ratio": round(best["hf"] / best["vllm"], 2),
        "hf_s": round(total["hf"], 2),
        "vllm_s": round(total["vllm"], 2),
        "hf_batch": hf_engine.batch_size,
    }
    details = {"times": times, "solutions": len(solutions), "steps": sum(steps),
               "sequences_per_job": sequences, "max_new_tokens": max_new_tokens,
               "torch_threads": torch.get_num_threads()}  # fmt: skip
    print(f"results: {record.save(figures, details)}")
    print(summary_line(figures))


if __name__ == "__main__":
    main()
