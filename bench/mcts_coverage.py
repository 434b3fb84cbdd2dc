"""Coverage at equal generated tokens: MCTS against independent sampling (best-of-N) on the RL problems.

On the first ``--problems`` problems of the mixed-supervision testbed's ``rl`` split (fresh problems,
final answers only: the problems expert iteration searches), the actor:

- searches one tree per problem (:mod:`llmac.mcts.search`; terminals verified, new nodes valued by
  ``--leaf``: the step critic ``--critic``, verified rollouts, or a mix), every token it generates
  counted at the engine (sampled steps and rollouts);
- samples whole solutions per problem, round-robin over the problems (sample ``j`` of every problem
  before sample ``j + 1`` of any), and keeps them in that order until their tokens would pass the
  search's total.

Coverage is the share of problems with >= 1 verified correct solution: for MCTS a verified correct
terminal in the tree (what ``llmac mcts build`` exports and expert iteration trains on;
``mcts_any_coverage`` also counts a verified correct leaf rollout), for best-of-N a correct sample.
The last line starts ``ratio=<mcts coverage / best-of-N coverage>``. ``--quick`` is a smoke run: a
tiny actor warm-started in seconds, 16 problems, a few iterations on the transformers engine (its
figures say nothing about the methods).

    python bench/mcts_coverage.py --quick
    python bench/mcts_coverage.py --actor runs/demo/sft --critic runs/demo/critic
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from helpers.bench_actor import build_actor  # noqa: E402
from helpers.results import BenchRecord, add_results_arg, start_output, summary_line  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUICK = {"problems": 16, "iterations": 4, "branching": 3, "max_children": 3, "trees_per_batch": 16,
         "engine": "hf", "leaf": "rollouts"}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--quick", action="store_true", help="Smoke run (tiny warm-started actor, 16 problems)."
    )
    parser.add_argument("--actor", default=str(REPO / "runs/demo/sft"), help="The SFT'd actor (full mode).")
    parser.add_argument(
        "--critic", default=str(REPO / "runs/demo/critic"), help="Step critic (leaf critic/mixed)."
    )
    parser.add_argument("--leaf", default="critic", choices=("critic", "rollouts", "mixed"),
                        help="Value of new non-terminal nodes (quick: rollouts).")  # fmt: skip
    parser.add_argument("--problems", type=int, default=300, help="RL problems searched and sampled.")
    parser.add_argument("--iterations", type=int, default=16, help="Search iterations per tree.")
    parser.add_argument("--branching", type=int, default=4, help="Candidate steps per expansion.")
    parser.add_argument("--max-children", type=int, default=4, help="Distinct children kept per node.")
    parser.add_argument("--max-depth", type=int, default=8, help="Steps per path at most.")
    parser.add_argument("--max-step-tokens", type=int, default=32, help="Tokens per step at most.")
    parser.add_argument("--c", type=float, default=2.0, help="UCT exploration constant.")
    parser.add_argument(
        "--num-rollouts", type=int, default=1, help="Rollouts per valued node (leaf rollouts/mixed)."
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="Tokens per rollout and per sampled solution."
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="Sampling temperature of both methods."
    )
    parser.add_argument("--trees-per-batch", type=int, default=100, help="Trees advancing together.")
    parser.add_argument(
        "--samples-per-call", type=int, default=4, help="Best-of-N: samples per problem per call."
    )
    parser.add_argument(
        "--engine", default="auto", choices=("auto", "vllm", "hf"), help="Rollout engine (quick: hf)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of both methods' samples.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    return args


def rl_problems(count: int) -> tuple[list[str], list[str]]:
    """The first ``count`` problems of the testbed's RL split (recipes/ppo/tiny_mixed.yaml's task)."""
    from llmac.data.tasks import TaskConfig, load_task

    rows = load_task(
        TaskConfig(task="arithmetic_mixed", answer_only_share=0.6, task_seed=0, num_train=count), "rl"
    )
    return list(rows["question"]), [str(a) for a in rows["answer"]]


class RolloutSuccesses:
    """A rollout evaluator that also notes which trees got a verified correct rollout."""

    def __init__(self, rollouts) -> None:
        self.rollouts, self.trees = rollouts, set()

    def __call__(self, leaves):
        shares = self.rollouts(leaves)
        self.trees |= {id(tree) for (tree, _), share in zip(leaves, shares, strict=True) if share > 0}
        return shares


def search_coverage(engine, questions, answers, args, reward_fn) -> dict:
    """Trees for every problem; coverage and the generated tokens (counted at the engine)."""
    from llmac.critic.labelling import MCLabelConfig
    from llmac.mcts.expert_iteration import CountingEngine
    from llmac.mcts.search import Search, SearchConfig, new_trees
    from llmac.mcts.values import CriticValue, MixedValue, RolloutValue

    counting = CountingEngine(engine)
    config = SearchConfig(iterations=args.iterations, branching=args.branching, max_children=args.max_children,
                          max_depth=args.max_depth, max_step_tokens=args.max_step_tokens, c=args.c,
                          temperature=args.temperature, seed=args.seed)  # fmt: skip
    successes = RolloutSuccesses(RolloutValue(counting, reward_fn, MCLabelConfig(
        num_rollouts=args.num_rollouts, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
        seed=args.seed + 1)))  # fmt: skip
    evaluate = successes
    if args.leaf != "rollouts":
        from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer

        model = load_critic(args.critic).eval()
        critic = CriticValue(model, load_critic_tokenizer(args.critic), critic_delimiter(model))
        evaluate = critic if args.leaf == "critic" else MixedValue(critic, successes)
    trees, started = [], time.perf_counter()
    for start in range(0, len(questions), args.trees_per_batch):
        stop = start + args.trees_per_batch
        seeded = replace(config, seed=args.seed + start * 1_000_003)  # no two batches share a step seed
        batch = new_trees(counting, questions[start:stop], answers[start:stop], seeded)
        Search(counting, batch, seeded, evaluate, reward_fn).run()
        trees += batch
        print(f"  searched {len(trees)}/{len(questions)} trees, {counting.count.generated_tokens:,} tokens")
    tree_covered = [tree.root.has_correct_terminal() for tree in trees]
    any_covered = [c or id(t) in successes.trees for c, t in zip(tree_covered, trees, strict=True)]
    return {
        "coverage": sum(tree_covered) / len(trees),
        "any_coverage": sum(any_covered) / len(trees),
        "tokens": counting.count.generated_tokens,
        "completions": counting.count.completions,
        "step_completions": counting.count.step_completions,
        "rollout_completions": counting.count.rollout_completions,
        "nodes": sum(1 for tree in trees for _ in tree.nodes()),
        "seconds": time.perf_counter() - started,
    }


def sample_coverage(engine, questions, answers, token_budget: int, args, reward_fn) -> dict:
    """Best-of-N within ``token_budget`` generated tokens: samples taken round-robin until the next
    would pass the budget; the share of problems with a verified correct one among them."""
    from llmac.data.loading import format_prompt
    from llmac.engines import SamplingConfig
    from llmac.rewards.checks import verify

    prompts = [format_prompt(engine.tokenizer, q) for q in questions]
    samples: list[list[tuple[int, bool]]] = [[] for _ in prompts]  # (tokens, correct) in sample order
    generated, call, started = 0, 0, time.perf_counter()
    n = args.samples_per_call
    while generated < token_budget:
        sampling = SamplingConfig(n=n, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                  seed=args.seed + 7 + call * len(prompts) * n)  # fmt: skip
        groups = engine.generate(prompts, sampling)
        texts = [c.text for group in groups for c in group]
        rewards = iter(verify(reward_fn, texts, [a for a, g in zip(answers, groups, strict=True) for _ in g]))
        for problem, group in enumerate(groups):
            samples[problem] += [(len(c.token_ids), next(rewards) >= 0.5) for c in group]
        generated += sum(len(c.token_ids) for group in groups for c in group)
        call += 1
    covered, spent, taken = [False] * len(prompts), 0, 0
    for j in range(call * n):
        for problem in range(len(prompts)):
            tokens, correct = samples[problem][j]
            if spent + tokens > token_budget:
                break
            spent, taken = spent + tokens, taken + 1
            covered[problem] |= correct
        else:
            continue
        break
    return {"coverage": sum(covered) / len(prompts), "tokens": spent, "samples": taken,
            "samples_per_problem": taken / len(prompts), "seconds": time.perf_counter() - started}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    start_output(args.threads)
    from llmac.engines import EngineConfig, build_engine
    from llmac.fingerprints import is_complete_model
    from llmac.rewards.registry import get_reward_fn

    record = BenchRecord("mcts_coverage", args)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            tiny = argparse.Namespace(hidden_size=128, layers=2, train_steps=150, seed=args.seed)
            actor = build_actor(Path(tmp) / "tiny", tiny)
        else:
            actor = Path(args.actor)
            if not is_complete_model(actor):
                sys.exit(
                    f"--actor {actor} is not a complete saved model (e.g. `make demo` writes runs/demo/sft)"
                )
        if args.leaf != "rollouts" and not is_complete_model(Path(args.critic)):
            sys.exit(f"--critic {args.critic} is not a complete saved critic (leaf {args.leaf} needs one)")
        questions, answers = rl_problems(args.problems)
        reward_fn = get_reward_fn("math")
        engine = build_engine(actor, EngineConfig(engine=args.engine, engine_dtype="float32"))
        try:
            mcts = search_coverage(engine, questions, answers, args, reward_fn)
            bon = sample_coverage(engine, questions, answers, mcts["tokens"], args, reward_fn)
        finally:
            engine.close()
    print(f"actor {actor}; {args.problems} RL problems; leaf {args.leaf}; {args.iterations} iterations, "
          f"b={args.branching}, width {args.max_children}, depth {args.max_depth}")  # fmt: skip
    print(f"MCTS: coverage {mcts['coverage']:.3f} (with rollouts {mcts['any_coverage']:.3f}) in "
          f"{mcts['tokens']:,} tokens, {mcts['completions']:,} completions, {mcts['seconds']:.0f}s")  # fmt: skip
    print(f"best-of-N: coverage {bon['coverage']:.3f} in {bon['tokens']:,} tokens, "
          f"{bon['samples_per_problem']:.2f} samples per problem, {bon['seconds']:.0f}s")  # fmt: skip
    ratio = mcts["coverage"] / bon["coverage"] if bon["coverage"] else float("inf")
    figures = {
        "ratio": round(ratio, 3),
        "ratio_any": round(mcts["any_coverage"] / bon["coverage"], 3) if bon["coverage"] else float("inf"),
        "mcts_coverage": round(mcts["coverage"], 4),
        "mcts_any_coverage": round(mcts["any_coverage"], 4),
        "bon_coverage": round(bon["coverage"], 4),
        "tokens": mcts["tokens"],
        "bon_samples_per_problem": round(bon["samples_per_problem"], 2),
        "problems": args.problems,
    }
    print(f"results: {record.save(figures, {'mcts': mcts, 'best_of_n': bon, 'actor': str(actor)})}")
    print(summary_line(figures))
    return figures


if __name__ == "__main__":
    main()
