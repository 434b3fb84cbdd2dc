"""A step critic trained on MCTS value labels against one trained on as many Monte-Carlo labelled rows.

Both critics start from the actor (``--actor``) and train with the same settings (``llmac critic
train``: soft BCE at every step end) on the same number of rows, from the same training problems:

- MC rows (Math-Shepherd, :mod:`llmac.critic.labelling`): sampled solutions, each step prefix continued
  ``--mc-rollouts`` times; ``--mc-labels`` reuses a labelled dataset (the demo's ``runs/demo/critic_labels``);
- MCTS rows (:func:`llmac.mcts.exports.value_label_rows`): one tree per distinct problem of the MC rows
  (terminals verified, new nodes valued by ``--num-rollouts`` verified rollouts), one row per leaf of
  the visited tree, each step labelled with its node's mean backed-up value on [0, 1].

The larger set is cut to the smaller one's size (a seeded random subset). Each critic is then measured
on the same held-out data (:mod:`llmac.critic.evaluation`): step AUC against held-out MC labels
(``--held-out-labels``) and best-of-N on held-out rollouts with N samples a problem
(``--held-out-rollouts``; the critic's pick by its lowest step value, and by its last). Without those
options they are made here from the task's held-out problems. ``--quick`` is a smoke run (a tiny actor
warm-started in seconds, a few problems, a few training steps; its figures say nothing).

    python bench/mcts_critic.py --quick
    python bench/mcts_critic.py --actor runs/demo/sft --mc-labels runs/demo/critic_labels \\
        --held-out-labels runs/demo/held_out_labels --held-out-rollouts runs/demo/held_out_rollouts
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from helpers.bench_actor import build_actor  # noqa: E402
from helpers.results import BenchRecord, add_results_arg, start_output, summary_line  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "runs" / "demo"
QUICK = {"problems": 8, "solutions": 2, "mc_rollouts": 2, "iterations": 3, "branching": 3, "num_rollouts": 2,
         "held_out_problems": 8, "best_of": 4, "critic_steps": 4, "critic_batch_size": 8, "engine": "hf"}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--quick", action="store_true", help="Smoke run (tiny warm-started actor, a few problems)."
    )
    parser.add_argument("--actor", default=str(DEMO / "sft"), help="The SFT'd actor (full mode).")
    parser.add_argument(
        "--mc-labels", default=None, help="MC-labelled rows to reuse (e.g. runs/demo/critic_labels)."
    )
    parser.add_argument(
        "--held-out-labels", default=None, help="Held-out MC labels (e.g. runs/demo/held_out_labels)."
    )
    parser.add_argument("--held-out-rollouts", default=None,
                        help="Held-out rollouts, N per problem (e.g. runs/demo/held_out_rollouts).")  # fmt: skip
    parser.add_argument("--problems", type=int, default=256, help="Training problems (without --mc-labels).")
    parser.add_argument("--solutions", type=int, default=4, help="MC: solutions sampled per problem.")
    parser.add_argument("--mc-rollouts", type=int, default=8, help="MC: continuations per step prefix.")
    parser.add_argument("--iterations", type=int, default=16, help="MCTS iterations per tree.")
    parser.add_argument("--branching", type=int, default=4, help="MCTS candidate steps per expansion.")
    parser.add_argument("--max-depth", type=int, default=8, help="MCTS steps per path at most.")
    parser.add_argument("--num-rollouts", type=int, default=4, help="MCTS rollouts per valued node.")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="Tokens per solution or rollout.")
    parser.add_argument("--held-out-problems", type=int, default=300, help="Held-out problems (made here).")
    parser.add_argument("--best-of", type=int, default=8, help="Samples per held-out problem (made here).")
    parser.add_argument("--critic-steps", type=int, default=300, help="Critic training steps (each critic).")
    parser.add_argument(
        "--critic-batch-size", type=int, default=32, help="Critic training batch (solutions)."
    )
    parser.add_argument("--critic-learning-rate", type=float, default=1e-3, help="Critic learning rate.")
    parser.add_argument(
        "--engine", default="auto", choices=("auto", "vllm", "hf"), help="Rollout engine (quick: hf)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the samples, the subset and training.")
    parser.add_argument(
        "--out", default=str(REPO / "runs" / "bench_mcts_critic"), help="Where data and critics go."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
        args.mc_labels = args.held_out_labels = args.held_out_rollouts = None
    return args


def task_rows(split: str, count: int):
    """The mixed-supervision testbed's problems (recipes/ppo/tiny_mixed.yaml's task)."""
    from llmac.data.tasks import TaskConfig, load_task

    config = TaskConfig(task="arithmetic_mixed", answer_only_share=0.6, task_seed=0, num_train=count,
                        num_eval=count)  # fmt: skip
    rows = load_task(config, split)
    return rows.remove_columns([c for c in rows.column_names if c not in ("question", "answer")])


def mc_labels(engine, args, reward_fn):
    """MC step labels of ``--solutions`` sampled solutions per training problem."""
    from llmac.critic.labelling import MCLabelConfig, label_steps
    from llmac.engines import SamplingConfig
    from llmac.rollouts import sample_rollouts

    rows = task_rows("train", args.problems)
    sampling = SamplingConfig(
        n=args.solutions, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    solutions = sample_rollouts(engine, rows, sampling, reward_fn, progress=False)
    mc = MCLabelConfig(num_rollouts=args.mc_rollouts, max_new_tokens=args.max_new_tokens, seed=args.seed + 1)
    return label_steps(engine, solutions, mc, reward_fn, progress=False)


def mcts_labels(engine, questions: list[str], answers: list[str], args, reward_fn):
    """Value labels of one tree per problem, and the tokens generated for them."""
    from llmac.critic.labelling import MCLabelConfig
    from llmac.mcts.expert_iteration import CountingEngine
    from llmac.mcts.exports import value_label_rows
    from llmac.mcts.search import SearchConfig, search
    from llmac.mcts.values import RolloutValue

    counting = CountingEngine(engine)
    config = SearchConfig(iterations=args.iterations, branching=args.branching, max_children=args.branching,
                          max_depth=args.max_depth, max_step_tokens=32, seed=args.seed + 2)  # fmt: skip
    values = RolloutValue(counting, reward_fn, MCLabelConfig(num_rollouts=args.num_rollouts,
                                                             max_new_tokens=args.max_new_tokens, seed=args.seed + 3))  # fmt: skip
    trees, _ = search(counting, questions, answers, config, values, reward_fn)
    return value_label_rows(trees, delimiter=engine.delimiter), counting.count.generated_tokens


def held_out_data(engine, args, reward_fn):
    """Held-out rollouts (``--best-of`` per problem) and MC labels of the first sample of each problem."""
    from llmac.critic.labelling import MCLabelConfig, label_steps
    from llmac.engines import SamplingConfig
    from llmac.rollouts import sample_rollouts

    rows = task_rows("eval", args.held_out_problems)
    sampling = SamplingConfig(
        n=args.best_of, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed + 4
    )
    rollouts = sample_rollouts(engine, rows, sampling, reward_fn, progress=False)
    first = rollouts.filter(lambda row: row["sample_index"] == 0)
    mc = MCLabelConfig(num_rollouts=args.mc_rollouts, max_new_tokens=args.max_new_tokens, seed=args.seed + 5)
    return label_steps(engine, first, mc, reward_fn, progress=False), rollouts


def same_size(a, b, seed: int):
    """Both datasets cut to the smaller one's size (a seeded random subset of the larger)."""
    size = min(len(a), len(b))

    def cut(rows):
        return rows if len(rows) == size else rows.shuffle(seed=seed).select(range(size))

    return cut(a), cut(b)


def train_and_evaluate(name: str, rows, actor: Path, held_labels, held_rollouts, args) -> dict:
    """A critic trained on ``rows`` (``llmac critic train``), its step AUC and best-of-N."""
    from dataclasses import asdict

    from llmac.config import ModelConfig
    from llmac.critic.evaluation import evaluate_on_labels, evaluate_selection
    from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
    from llmac.critic.training import CriticConfig, CriticDataConfig, run_critic_training
    from llmac.rewards import answer_keys
    from llmac.rollouts import save_dataset_atomically

    out = Path(args.out)
    data_dir = save_dataset_atomically(rows, out / f"{name}_rows", "mcts critic bench", overwrite=True)
    critic_args = CriticConfig(
        output_dir=str(out / f"{name}_critic"), max_steps=args.critic_steps,
        per_device_train_batch_size=args.critic_batch_size, learning_rate=args.critic_learning_rate,
        warmup_steps=args.critic_steps // 10, lr_scheduler_type="cosine", weight_decay=0.0, eval_fraction=0.0,
        logging_steps=50, save_strategy="no", report_to="none", seed=args.seed,
    )  # fmt: skip
    started = time.perf_counter()
    critic_dir = run_critic_training(ModelConfig(model_name_or_path=str(actor)),
                                     CriticDataConfig(init_from=str(actor), train_data=str(data_dir)),
                                     critic_args, overwrite=True)  # fmt: skip
    seconds = time.perf_counter() - started
    model, tokenizer = load_critic(critic_dir).eval(), load_critic_tokenizer(critic_dir)
    delimiter = critic_delimiter(model)
    labels = evaluate_on_labels(model, tokenizer, held_labels, delimiter)
    selection = evaluate_selection(model, tokenizer, held_rollouts, delimiter, answer_keys)
    return {"rows": len(rows), "steps": sum(map(len, rows["labels"])), "train_seconds": seconds,
            "labels": asdict(labels), "best_of_n": asdict(selection)}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    start_output(args.threads)
    from llmac.data.loading import load_records
    from llmac.engines import EngineConfig, build_engine
    from llmac.fingerprints import is_complete_model
    from llmac.rewards.registry import get_reward_fn

    record = BenchRecord("mcts_critic", args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        tiny = argparse.Namespace(hidden_size=128, layers=2, train_steps=150, seed=args.seed)
        actor = build_actor(out / "quick-actor", tiny)
    else:
        actor = Path(args.actor)
        if not is_complete_model(actor):
            sys.exit(f"--actor {actor} is not a complete saved model (e.g. `make demo` writes runs/demo/sft)")
    reward_fn = get_reward_fn("math")
    engine = build_engine(actor, EngineConfig(engine=args.engine, engine_dtype="float32"))
    started = time.perf_counter()
    try:
        mc = load_records(args.mc_labels) if args.mc_labels else mc_labels(engine, args, reward_fn)
        mc_seconds = time.perf_counter() - started
        problems = {}  # distinct problems of the MC rows, in order
        for question, answer in zip(mc["prompt"], mc["answer"], strict=True):
            problems.setdefault(question, str(answer))
        started = time.perf_counter()
        mcts, mcts_tokens = mcts_labels(engine, list(problems), list(problems.values()), args, reward_fn)
        mcts_seconds = time.perf_counter() - started
        if args.held_out_labels and args.held_out_rollouts:
            held_labels, held_rollouts = (
                load_records(args.held_out_labels),
                load_records(args.held_out_rollouts),
            )
        else:
            held_labels, held_rollouts = held_out_data(engine, args, reward_fn)
    finally:
        engine.close()
    print(f"{len(problems)} training problems: {len(mc)} MC rows ({mc_seconds:.0f}s), {len(mcts)} MCTS rows "
          f"({mcts_tokens:,} tokens, {mcts_seconds:.0f}s)")  # fmt: skip
    mc_rows, mcts_rows = same_size(mc.select_columns(["prompt", "completions", "labels", "hard_labels", "answer"]),
                                   mcts.select_columns(["prompt", "completions", "labels", "hard_labels", "answer"]),
                                   args.seed)  # fmt: skip
    results = {
        name: train_and_evaluate(name, rows, actor, held_labels, held_rollouts, args)
        for name, rows in (("mcts", mcts_rows), ("mc", mc_rows))
    }
    for name, result in results.items():
        print(f"{name}: {result['rows']} rows ({result['steps']} steps): step AUC {result['labels']['step_auc']:.3f}, "
              f"best-of-{result['best_of_n']['n']} {result['best_of_n']['critic_min']:.3f} (min) "
              f"{result['best_of_n']['critic_last']:.3f} (last)")  # fmt: skip
    selection = results["mc"]["best_of_n"]
    print(f"held out: random {selection['random']:.3f}, majority {selection['majority']:.3f}, "
          f"pass@{selection['n']} {selection['pass_at_n']:.3f}")  # fmt: skip
    figures = {
        "mcts_step_auc": round(results["mcts"]["labels"]["step_auc"], 4),
        "mc_step_auc": round(results["mc"]["labels"]["step_auc"], 4),
        "mcts_best_of_n": round(results["mcts"]["best_of_n"]["critic_min"], 4),
        "mc_best_of_n": round(results["mc"]["best_of_n"]["critic_min"], 4),
        "mcts_best_of_n_last": round(results["mcts"]["best_of_n"]["critic_last"], 4),
        "mc_best_of_n_last": round(results["mc"]["best_of_n"]["critic_last"], 4),
        "random_of_n": round(selection["random"], 4),
        "majority_of_n": round(selection["majority"], 4),
        "n": selection["n"],
        "rows": results["mc"]["rows"],
        "mcts_steps": results["mcts"]["steps"],
        "mc_steps": results["mc"]["steps"],
    }
    details = {"actor": str(actor), "mc_rows_available": len(mc), "mcts_rows_available": len(mcts),
               "mcts_tokens": mcts_tokens, "results": results}  # fmt: skip
    print(f"results: {record.save(figures, details)}")
    print(summary_line(figures))
    return figures


if __name__ == "__main__":
    main()
