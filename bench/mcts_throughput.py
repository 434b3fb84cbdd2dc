"""MCTS throughput: search-tree nodes per second, VLLMEngine against HFEngine on the same searches.

The model is llmac's tiny Qwen2 trained for a few dozen next-token steps on arithmetic solutions (as in
``bench/rollout_throughput.py``), so its steps end at the delimiter and its responses with EOS. Both
engines search the same questions with the same :class:`~llmac.mcts.search.SearchConfig` (UCT, seed,
branching, limits) and the same leaf values (``num_rollouts`` continuations checked by the math
verifier) through :func:`llmac.mcts.build.build_tree_rows`, the code ``llmac mcts build`` runs: all
trees advance together, so each iteration is one ``sample_step`` call for every tree and one
``continue_from`` call for every new node's rollouts. vLLM gets each request with its own seed and
shares the trees' prefixes through its prefix cache; HF gets its fastest CPU setting, a whole call's
sequences in one ``generate``. The two engines sample different tokens from the same seeds, so their
trees differ in shape: the figure is nodes per second of search (and generated tokens per second).
Each engine gets a warm-up search first (2 trees, the timed settings); timed searches alternate
between the engines and an engine's rate is its nodes over its summed time. Training and start-up
are not timed. The figures and the command go to ``bench/results/mcts_throughput[-quick].json``;
the last line printed is ``ratio=<vllm/hf nodes per second> ...``. On cores busy with other work the
figures swing by 2x from search to search: compare runs made on idle cores.

With ``--model PATH`` a real model's folder (e.g. SmolLM2-135M-Instruct from ``make smollm2``) searches
reasoning-gym's English questions, into ``bench/results/mcts_throughput-<model>[-quick].json``.

    python bench/mcts_throughput.py --quick
    python bench/mcts_throughput.py --model ~/.cache/llmac/smollm2/SmolLM2-135M-Instruct --questions 8
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

from llmac.data import arithmetic_dataset
from llmac.engines.hf import HFEngine
from llmac.mcts.build import build_tree_rows, tree_counts, trees_of
from llmac.mcts.config import MCTSBuildConfig
from llmac.mcts.search import SearchConfig
from llmac.rewards import math_rewards


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="16 questions, 6 iterations, 2 timed searches per engine."
    )
    parser.add_argument("--questions", type=int, default=None, help="Trees searched together (default 32).")
    parser.add_argument("--iterations", type=int, default=None, help="Search iterations (default 12).")
    parser.add_argument("--branching", type=int, default=4, help="Step samples per expansion.")
    parser.add_argument("--max-children", type=int, default=4, help="Distinct children kept per node.")
    parser.add_argument("--max-depth", type=int, default=8, help="Depth limit.")
    parser.add_argument("--max-step-tokens", type=int, default=48, help="Tokens per step at most.")
    parser.add_argument("--num-rollouts", type=int, default=2, help="Leaf rollouts per new node.")
    parser.add_argument("--rollout-max-new-tokens", type=int, default=96, help="Tokens per rollout at most.")
    parser.add_argument(
        "--repeats", type=int, default=None, help="Timed searches per engine (default 3, quick 2)."
    )
    add_actor_args(parser, train_steps=40)
    add_vllm_args(parser)
    parser.add_argument(
        "--hf-batch-size", type=int, default=None, help="Sequences per HF generate (default: a whole call's)."
    )
    add_results_arg(parser)
    return parser.parse_args()


def timed_search(engine, questions, search: SearchConfig, build: MCTSBuildConfig) -> tuple[dict, float]:
    """The counts of one search of every question, and its wall time."""
    started = time.perf_counter()
    rows = build_tree_rows(engine, questions, search, build, math_rewards, progress=False)
    seconds = time.perf_counter() - started
    return tree_counts(trees_of(rows)), seconds


def main() -> None:
    args = parse_args()
    record = BenchRecord(bench_name("mcts_throughput", args), args)
    wall = record.started
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # keep the figures readable
    from llmac.engines.vllm import VLLMEngine

    num_questions = args.questions or (16 if args.quick else 32)
    iterations = args.iterations or (6 if args.quick else 12)
    repeats = args.repeats or (2 if args.quick else 3)
    search = SearchConfig(iterations=iterations, branching=args.branching, max_children=args.max_children,
                          max_depth=args.max_depth, max_step_tokens=args.max_step_tokens, seed=args.seed)  # fmt: skip
    build = MCTSBuildConfig(questions_per_shard=num_questions, num_rollouts=args.num_rollouts,
                            rollout_max_new_tokens=args.rollout_max_new_tokens, progress=False)  # fmt: skip
    rows = arithmetic_dataset(num_questions + 2, seed=args.seed + 2, config=arithmetic_task(args))
    rows = rows.select_columns(["question", "answer"])
    warm_up, questions = rows.select(range(2)), rows.select(range(2, len(rows)))
    sequences = num_questions * max(args.branching, args.max_children * args.num_rollouts)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = actor_folder(Path(tmp), args)
        started = time.perf_counter()
        vllm_engine = VLLMEngine(
            model_dir, dtype="float32", max_model_len=512, seed=args.seed, **vllm_kwargs(args)
        )
        print(f"vLLM engine started in {time.perf_counter() - started:.1f}s")
        hf_engine = HFEngine(model_dir, dtype="float32", batch_size=args.hf_batch_size or sequences)
        try:
            for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
                _, seconds = timed_search(engine, warm_up, search, build)
                print(f"{name} warm-up search (2 trees): {seconds:.1f}s")
            runs: dict[str, list[tuple[dict, float]]] = {"vllm": [], "hf": []}
            for _ in range(repeats):
                for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
                    counts, seconds = timed_search(engine, questions, search, build)
                    runs[name].append((counts, seconds))
                    print(f"{name}: {counts['nodes']} nodes, {counts['generated_tokens']} tokens, "
                          f"{counts['trees_with_correct']}/{counts['trees']} trees solved in {seconds:.1f}s "
                          f"({counts['nodes'] / seconds:.1f} nodes/s)")  # fmt: skip
        finally:
            vllm_engine.close()

    nodes = {name: sum(c["nodes"] for c, _ in r) for name, r in runs.items()}
    tokens = {name: sum(c["generated_tokens"] for c, _ in r) for name, r in runs.items()}
    seconds = {name: sum(s for _, s in r) for name, r in runs.items()}
    rate = {name: nodes[name] / seconds[name] for name in runs}
    print(
        f"workload: {actor_description(args)}; {num_questions} trees x {iterations} iterations, branching "
        f"{args.branching}, <= {args.max_children} children, depth <= {args.max_depth}, {args.num_rollouts} "
        f"rollouts per new node (<= {args.rollout_max_new_tokens} tokens); prefix caching "
        f"{'on' if args.prefix_caching else 'off'}; HF batch {hf_engine.batch_size}, torch threads {torch.get_num_threads()}"
    )
    for name in ("vllm", "hf"):
        print(
            f"{name}: {rate[name]:.1f} nodes/s, {tokens[name] / seconds[name]:,.0f} tokens/s over {repeats} searches"
        )
    print(f"wall time after imports {time.perf_counter() - wall:.1f}s")
    figures = {
        "ratio": round(rate["vllm"] / rate["hf"], 2),
        "vllm_nodes_per_s": round(rate["vllm"], 1),
        "hf_nodes_per_s": round(rate["hf"], 1),
        "token_ratio": round((tokens["vllm"] / seconds["vllm"]) / (tokens["hf"] / seconds["hf"]), 2),
        "hf_batch": hf_engine.batch_size,
    }
    details = {"runs": runs, "questions": num_questions, "iterations": iterations, "search": vars(search),
               "torch_threads": torch.get_num_threads()}  # fmt: skip
    print(f"results: {record.save(figures, details)}")
    print(summary_line(figures))


if __name__ == "__main__":
    main()
