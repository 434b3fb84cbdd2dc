"""PPO with a step critic against TRL's GRPO: held-out accuracy for the same number of completions.

From the same SFT'd tiny actor (``--actor``, or one ``llmac sft`` trains once on
``recipes/sft/tiny_arithmetic.yaml``: ``bench_actor``'s few-step warm start solves almost no problem,
which leaves RL no signal), on the arithmetic task of ``recipes/ppo/tiny_arithmetic.yaml`` and with
its settings (learning rate, batch, sampling, read from the recipe), three arms train for the same
number of generated completions:

- ``ppo``: llmac PPO, step-level GAE with a step critic (``--critic``: an ``llmac critic train``
  output; without it the value head starts at zero);
- ``trl_grpo``: TRL's ``GRPOTrainer`` with its default loss and the same math reward, prompts,
  generation batch, optimizer steps and learning-rate schedule (``bench/helpers/trl_grpo.py``);
- ``llmac_grpo``: llmac's trainer with GRPO group advantages and no critic, which separates the
  critic's effect (``ppo`` against it) from the trainer's (it against ``trl_grpo``).

Any other ``--<field> <value>`` is a recipe override given to every arm, e.g. ``--lr_scheduler_type
cosine --learning_rate 1e-4 --ppo_epochs 2``. Held-out accuracy is greedy accuracy on the recipe's
held-out problems, decoded by llmac's vLLM engine for every arm, at the start, every ``eval_every``
iterations' worth of completions and at the end. Training time is each arm's training loop,
generation included, without its set-up (model loading, vLLM start-up) and without the held-out
evaluations. Each arm of each seed runs in its own process (a fresh vLLM engine and accelerate
state) in ``<out>/seed<s>/<arm>``; a rerun reuses an arm only when its trained actor is complete and
it was made from the same inputs (the actor's and critic's content fingerprints, the recipe and
overrides, llmac's code version and this bench's code). Cached actors are keyed the same way.

``--quick`` is a smoke run of the whole comparison: a small actor warm-started in seconds instead
of the 5-minute SFT (cached in ``<out>``), 2 iterations of 16 prompts x 4 samples, 64 held-out
problems (greedy only); its accuracies say nothing about the methods. Each arm still pays its own
process start-up (imports, vLLM), which is most of its time. The figures and the command go
to ``bench/results/ppo_vs_grpo[-quick].json``. The last line printed is ``ppo_acc=<a> grpo_acc=<b>
llmac_grpo_acc=<c> base_acc=<d> ppo_time_s=<t1> grpo_time_s=<t2> llmac_grpo_time_s=<t3>``: means
over seeds of the final accuracy (``base_acc``: the actor before RL) and of the training seconds.
Other jobs on the cores make the times noisy (torch's threads spin against them; ``--threads 1``
can help).

    python bench/ppo_vs_grpo.py --quick
    python bench/ppo_vs_grpo.py --actor runs/demo/sft --critic runs/demo/critic
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from helpers.cache import cached_model, finish_artifact, keyed_folder, start_artifact
from helpers.results import BenchRecord, add_results_arg, summary_line

from llmac.files import write_text_atomically
from llmac.fingerprints import (
    inputs_key,
    is_complete_model,
    model_fingerprint,
    stage_done,
    write_stage_stamp,
)

REPO = Path(__file__).resolve().parent.parent
ARMS = ("ppo", "trl_grpo", "llmac_grpo")
QUICK_ITERATIONS = 2
QUICK_SETTINGS = ["--num_train", "2000", "--num_eval", "64", "--eval_samples", "0", "--prompts_per_iteration",
                  "16", "--samples_per_prompt", "4", "--mini_batch_size", "32"]  # fmt: skip
QUICK_ACTOR = {"train_steps": 150, "batch_size": 32, "learning_rate": 3e-3, "problems": 2000, "seed": 0}
# Fields the bench sets per arm; a recipe override may not change them.
BENCH_FIELDS = ("config", "model_name_or_path", "output_dir", "seed", "num_iterations", "eval_every",
                "checkpoint_every", "progress", "advantage_estimator", "value_model")  # fmt: skip
BENCH_CODE = (Path(__file__), REPO / "bench/helpers/trl_grpo.py")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The bench's arguments and the recipe overrides (every ``--field value`` it does not know)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"Smoke run: warm-started actor, {QUICK_ITERATIONS} small iterations, evaluated at start and end.",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated training seeds, one run per arm each (default 0,1,2; quick 0).",
    )
    parser.add_argument(
        "--out", default="runs/bench_ppo_vs_grpo", help="Folder of every run and the cached actors."
    )
    parser.add_argument(
        "--recipe",
        default=str(REPO / "recipes/ppo/tiny_arithmetic.yaml"),
        help="llmac PPO recipe (CPU settings).",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help=f"llmac iterations per arm (default: the recipe's; quick {QUICK_ITERATIONS}).",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="Iterations between evaluations (default: recipe's; quick: end).",
    )
    parser.add_argument(
        "--critic", default=None, help="Step critic for the ppo arm (default: value head at zero)."
    )
    parser.add_argument(
        "--arms", default=",".join(ARMS), help=f"Comma-separated arms to run, of {', '.join(ARMS)}."
    )
    parser.add_argument(
        "--actor",
        default=None,
        help="The SFT'd actor folder (default: SFT'd once by --sft-recipe into <out>; quick: warm-started).",
    )
    parser.add_argument(
        "--sft-recipe",
        default=str(REPO / "recipes/sft/tiny_arithmetic.yaml"),
        help="Without --actor: the `llmac sft` recipe that trains the actor (about 5 min on 2 cores).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in each arm (default: torch's choice).",
    )
    add_results_arg(parser)
    parser.add_argument("--run-arm", default=None, help=argparse.SUPPRESS)  # internal: one arm, in a child
    args, overrides = parser.parse_known_args(argv)
    for item in overrides:
        name = item[2:].partition("=")[0] if item.startswith("--") else None
        if name in BENCH_FIELDS:
            parser.error(f"--{name} is set by the bench for each arm; it cannot be overridden")
    args.overrides = overrides
    return args, overrides


def load_recipe(argv: list[str]):
    """``(ModelConfig, TaskConfig, EngineConfig, PPOConfig)`` of a recipe and CLI-style overrides."""
    from llmac.config import parse_config
    from llmac.ppo.trainer import CONFIG_CLASSES

    return parse_config(CONFIG_CLASSES, argv)


def arm_argv(spec: dict) -> list[str]:
    """The recipe, its overrides and this arm's settings, as ``llmac ppo`` would take them."""
    argv = ["--config", spec["recipe"], *spec["settings"], "--model_name_or_path", spec["actor"],
            "--output_dir", str(Path(spec["dir"]) / "run"), "--seed", str(spec["seed"]),
            "--num_iterations", str(spec["iterations"]), "--eval_every", str(spec["eval_every"]),
            "--checkpoint_every", "0", "--progress", "false"]  # fmt: skip
    if spec["arm"] == "ppo":
        argv += ["--advantage_estimator", "step_gae"]
        if spec["critic"]:
            argv += ["--value_model", spec["critic"]]
    elif spec["arm"] == "llmac_grpo":
        argv += ["--advantage_estimator", "grpo"]
    return argv


def eval_curve(metrics_path: Path) -> list[tuple[int, float]]:
    """``(completions, eval_accuracy)`` of every evaluated line of a ``metrics.jsonl``."""
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    return [(r["completions"], r["eval_accuracy"]) for r in records if r.get("eval_accuracy") is not None]


def run_llmac(spec: dict) -> dict:
    """One llmac arm (PPO or its GRPO estimator), its evaluations and set-up timed apart."""
    from llmac.distributed import end_process_group
    from llmac.ppo.trainer import PPOTrainer

    class TimedPPOTrainer(PPOTrainer):
        eval_seconds = 0.0
        saved_at = 0.0

        def evaluate(self) -> dict:
            start = time.perf_counter()
            result = super().evaluate()
            self.eval_seconds += time.perf_counter() - start
            return result

        def save(self) -> None:  # the last step of training, before the engine is shut down
            super().save()
            self.saved_at = time.perf_counter()

    started = time.perf_counter()
    trainer = TimedPPOTrainer(*load_recipe(arm_argv(spec)))
    setup_seconds = time.perf_counter() - started
    start = time.perf_counter()
    out = trainer.train()
    end_process_group()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "curve": eval_curve(out / "metrics.jsonl"),
        "completions": trainer.completions,
        "learning_rates": [r["learning_rate"] for r in records if "learning_rate" in r],
        "setup_seconds": setup_seconds,
        "train_seconds": trainer.saved_at - start - trainer.eval_seconds,
        "eval_seconds": trainer.eval_seconds,
    }


def run_arm(spec_path: Path) -> None:
    """Child process: run the arm ``spec_path`` describes, then write its ``result.json`` (atomically)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    spec = json.loads(spec_path.read_text())
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])
    if spec["arm"] == "trl_grpo":
        from helpers.trl_grpo import run_trl_grpo

        result = run_trl_grpo(*load_recipe(arm_argv(spec)))
    else:
        result = run_llmac(spec)
    write_json(Path(spec["dir"]) / "result.json", {"spec": spec, **result})


def write_json(path: Path, data) -> None:
    write_text_atomically(path, json.dumps(data, indent=1))


def spec_key(spec: dict) -> str:
    """The key of everything an arm's result depends on (its folder aside)."""
    return inputs_key(**{k: v for k, v in spec.items() if k != "dir"})


def finished(spec: dict) -> dict | None:
    """The result of an arm that ran to the end from exactly ``spec``'s inputs, else None."""
    arm_dir = Path(spec["dir"])
    if not stage_done(arm_dir, spec_key(spec), kind="model", parts=("run/actor",)):
        return None
    try:
        return json.loads((arm_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None


def launch(spec: dict) -> dict:
    """Run one arm in a fresh process (output in ``<dir>/log.txt``) unless it already finished."""
    result = finished(spec)
    if result is not None:
        print(f"  {spec['arm']} seed {spec['seed']}: reusing {spec['dir']} (same inputs, complete)")
        return result
    arm_dir, key = Path(spec["dir"]), spec_key(spec)
    start_artifact(arm_dir, key, arm=spec["arm"], seed=spec["seed"])  # a crashed run restarts afresh
    write_json(arm_dir / "spec.json", spec)
    started = time.perf_counter()
    with (arm_dir / "log.txt").open("w") as log:
        code = subprocess.call([sys.executable, __file__, "--run-arm", str(arm_dir / "spec.json")],
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    if code != 0:
        tail = (arm_dir / "log.txt").read_text().splitlines()[-30:]
        raise RuntimeError(f"arm {spec['arm']} seed {spec['seed']} failed (exit {code}):\n" + "\n".join(tail))
    finish_artifact(arm_dir, key, arm=spec["arm"], seed=spec["seed"])
    print(f"  {spec['arm']} seed {spec['seed']}: done in {time.perf_counter() - started:.0f}s ({arm_dir})")
    result = finished(spec)
    if result is None:
        raise RuntimeError(f"arm {spec['arm']} seed {spec['seed']} left no complete actor in {arm_dir}/run")
    return result


def sft_actor(out: Path, recipe: Path) -> Path:
    """The actor ``llmac sft`` trains on ``recipe``, once per recipe content and llmac version.

    A finished one is reused only when complete and stamped with the same inputs; an unfinished
    one (the folder's own ``llmac sft`` run, killed) is resumed by ``llmac sft`` itself.
    """
    key = inputs_key(kind="sft-actor", recipe_sha256=hashlib.sha256(recipe.read_bytes()).hexdigest())
    actor = keyed_folder(out, "sft-actor", key)
    if stage_done(actor, key, kind="model"):
        return actor
    print(f"SFT of the actor with {recipe} into {actor} (log: {actor}.log)")
    started = time.perf_counter()
    command = [sys.executable, "-m", "llmac", "sft", "--config", str(recipe), "--output_dir", str(actor)]
    with Path(f"{actor}.log").open("a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0 or not is_complete_model(actor):
        tail = Path(f"{actor}.log").read_text().splitlines()[-30:]
        raise RuntimeError(f"SFT of the actor failed (exit {code}):\n" + "\n".join(tail))
    write_stage_stamp(actor, key, recipe=str(recipe))
    print(f"SFT done in {time.perf_counter() - started:.0f}s")
    return actor


def quick_actor(out: Path) -> Path:
    """A small actor warm-started for a few hundred next-token steps (seconds), cached by its settings."""
    key = inputs_key(kind="quick-actor", **QUICK_ACTOR)

    def build(folder: Path) -> None:
        import torch

        from llmac.data import arithmetic_dataset
        from llmac.models import TinyModelConfig, warm_tiny_actor

        rows = arithmetic_dataset(QUICK_ACTOR["problems"], seed=QUICK_ACTOR["seed"] + 1)
        # One thread: at this size a second adds little, and on busy cores its barrier spins for ages.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        warm_tiny_actor(rows["question"], rows["solution"], folder, QUICK_ACTOR["train_steps"],
                        TinyModelConfig(seed=QUICK_ACTOR["seed"]), QUICK_ACTOR["batch_size"],
                        QUICK_ACTOR["learning_rate"])  # fmt: skip
        torch.set_num_threads(threads)

    started = time.perf_counter()
    actor, reused = cached_model(keyed_folder(out, "quick-actor", key), key, build, **QUICK_ACTOR)
    how = "reusing" if reused else f"warm-started in {time.perf_counter() - started:.1f}s:"
    print(f"quick actor: {how} {actor}")
    return actor


def checked_model(path: str, what: str) -> Path:
    folder = Path(path).resolve()
    if not is_complete_model(folder):
        raise SystemExit(f"{what} {folder} is not a complete saved model (config, weights, tokenizer)")
    return folder


def mean_curves(results: dict[str, list[dict]]) -> dict[str, list[tuple[int, float]]]:
    """Per arm, the accuracy at each completion count averaged over the seeds that evaluated there."""
    curves = {}
    for arm, runs in results.items():
        points: dict[int, list[float]] = {}
        for run in runs:
            for completions, accuracy in run["curve"]:
                points.setdefault(int(completions), []).append(accuracy)
        curves[arm] = [(c, float(np.mean(a))) for c, a in sorted(points.items())]
    return curves


def summary(runs: list[dict]) -> dict:
    """Means over seeds of one arm's final accuracy, training seconds and seconds per completion."""
    return {
        "accuracy": float(np.mean([r["curve"][-1][1] for r in runs])),
        "initial_accuracy": float(np.mean([r["curve"][0][1] for r in runs])),
        "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
        "ms_per_completion": float(np.mean([1e3 * r["train_seconds"] / r["completions"] for r in runs])),
        "completions": int(np.mean([r["completions"] for r in runs])),
    }


def plot(out: Path, curves: dict[str, list[tuple[int, float]]]) -> Path | None:
    """Mean curves as run folders (``<out>/mean/<arm>/metrics.jsonl``) and their comparison PNG."""
    try:
        from llmac.plot import compare_runs
    except ImportError:
        return None
    dirs = []
    for arm, curve in curves.items():
        folder = out / "mean" / arm
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            json.dumps({"iteration": i, "completions": c, "eval_accuracy": a})
            for i, (c, a) in enumerate(curve)
        ]
        (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        dirs.append(folder)
    return compare_runs(dirs, out / "compare_eval_accuracy.png", metric="eval_accuracy", x="completions")


def print_tables(arms: list[str], seeds: list[int], results: dict[str, list[dict]], curves: dict) -> None:
    print(f"\n{'seed':>4}  {'arm':<11} {'acc@0':>6} {'acc@end':>7} {'completions':>11} {'train_s':>8} "
          f"{'ms/compl':>8} {'setup_s':>7} {'eval_s':>6}")  # fmt: skip
    for arm in arms:
        for seed, r in zip(seeds, results[arm], strict=True):
            print(f"{seed:>4}  {arm:<11} {r['curve'][0][1]:>6.3f} {r['curve'][-1][1]:>7.3f} {r['completions']:>11} "
                  f"{r['train_seconds']:>8.1f} {1e3 * r['train_seconds'] / r['completions']:>8.2f} "
                  f"{r['setup_seconds']:>7.1f} {r['eval_seconds']:>6.1f}")  # fmt: skip
    if len({r["completions"] for runs in results.values() for r in runs}) != 1:
        print("WARNING: the arms generated different numbers of completions")
    print(f"\nheld-out greedy accuracy against completions generated (mean over seeds {seeds})")
    print(f"{'completions':>11}  " + "  ".join(f"{arm:>10}" for arm in arms))
    for c in sorted({c for curve in curves.values() for c, _ in curve}):
        row = {arm: dict(curves[arm]).get(c) for arm in arms}
        print(
            f"{c:>11}  " + "  ".join(f"{row[a]:>10.3f}" if row[a] is not None else f"{'-':>10}" for a in arms)
        )


def main() -> None:
    args, overrides = parse_args()
    if args.run_arm:
        run_arm(Path(args.run_arm))
        return
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show as they come, also in a log file
    record = BenchRecord("ppo_vs_grpo", args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.seeds = args.seeds or ("0" if args.quick else "0,1,2")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := set(arms) - set(ARMS):
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    recipe = Path(args.recipe).resolve()
    settings = (QUICK_SETTINGS if args.quick else []) + overrides
    _, task, engine, ppo = load_recipe(["--config", str(recipe), *settings])  # refuses bad overrides now
    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else ppo.num_iterations)
    eval_every = args.eval_every or (iterations if args.quick else ppo.eval_every)

    if args.actor:
        actor = checked_model(args.actor, "--actor")
    elif args.quick:
        actor = quick_actor(out)
    else:
        actor = sft_actor(out, Path(args.sft_recipe).resolve())
    critic = checked_model(args.critic, "--critic") if args.critic else None

    per_iteration = ppo.prompts_per_iteration * ppo.samples_per_prompt
    print(f"actor: {actor}")
    print(f"ppo critic: {critic or 'none given: the value head starts at zero (value_model None)'}")
    print(f"recipe: {recipe} (task {task.task}, {task.num_eval} held-out problems, lr {ppo.learning_rate:g} "
          f"{ppo.lr_scheduler_type} after {ppo.warmup_steps} warm-up steps); overrides: {' '.join(settings) or 'none'}")  # fmt: skip
    print(f"budget per arm: {iterations} iterations x {ppo.prompts_per_iteration} prompts x "
          f"{ppo.samples_per_prompt} samples = {iterations * per_iteration} completions, "
          f"max {ppo.max_new_tokens} tokens, {ppo.ppo_epochs} epoch(s) of minibatches of {ppo.mini_batch_size}; "
          f"held-out eval every {eval_every} iterations")  # fmt: skip
    print(f"llmac loss: clip {ppo.clip_low}/{ppo.clip_high}, {ppo.loss_aggregation} aggregation, "
          f"kl_coef {ppo.kl_coef}; rollouts on {engine.engine}")  # fmt: skip
    print(
        "trl GRPO loss: TRL's defaults (loss_type, beta, epsilon; see each arm's result.json); "
        "rollouts with transformers generate (no vLLM on CPU)"
    )
    print(f"seeds: {seeds}; folder: {out}")

    shared = {"actor": str(actor), "actor_fingerprint": model_fingerprint(actor),
              "recipe": str(recipe), "recipe_sha256": hashlib.sha256(recipe.read_bytes()).hexdigest(),
              "settings": settings, "iterations": iterations, "eval_every": eval_every, "threads": args.threads,
              "bench_code_sha256": hashlib.sha256(b"".join(p.read_bytes() for p in BENCH_CODE)).hexdigest()}  # fmt: skip
    critic_inputs = {"critic": str(critic) if critic else None,
                     "critic_fingerprint": model_fingerprint(critic) if critic else None}  # fmt: skip
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            spec = {"arm": arm, "seed": seed, **shared,
                    **(critic_inputs if arm == "ppo" else {"critic": None, "critic_fingerprint": None}),
                    "dir": str(out / f"seed{seed}" / arm)}  # fmt: skip
            results[arm].append(launch(spec))

    curves = mean_curves(results)
    print_tables(arms, seeds, results, curves)
    means = {arm: summary(runs) for arm, runs in results.items()}
    print(f"\nmeans over seeds {args.seeds}:")
    for arm, m in means.items():
        print(f"  {arm:<11} accuracy {m['initial_accuracy']:.3f} -> {m['accuracy']:.3f}, "
              f"train {m['train_seconds']:.1f}s ({m['ms_per_completion']:.2f} ms/completion)")  # fmt: skip
    if "ppo" in means and "trl_grpo" in means:
        ratio = means["trl_grpo"]["train_seconds"] / max(means["ppo"]["train_seconds"], 1e-9)
        print(f"  trl_grpo/ppo training time: {ratio:.2f}x")
    figure = plot(out, curves)

    def mean(arm: str, key: str) -> float:
        return means[arm][key] if arm in means else float("nan")

    figures = {
        "ppo_acc": mean("ppo", "accuracy"),
        "grpo_acc": mean("trl_grpo", "accuracy"),
        "llmac_grpo_acc": mean("llmac_grpo", "accuracy"),
        "base_acc": float(np.mean([m["initial_accuracy"] for m in means.values()])),
        "ppo_time_s": mean("ppo", "train_seconds"),
        "grpo_time_s": mean("trl_grpo", "train_seconds"),
        "llmac_grpo_time_s": mean("llmac_grpo", "train_seconds"),
    }
    details = {"seeds": seeds, "actor": str(actor), "critic": str(critic) if critic else None,
               "recipe": str(recipe), "settings": settings, "iterations": iterations,
               "eval_every": eval_every, "means": means, "curves": curves, "runs": results}  # fmt: skip
    write_json(out / "results.json", details)
    path = record.save(figures, details)
    print(f"results: {path} and {out / 'results.json'}" + (f"; figure: {figure}" if figure else ""))
    print(f"total {time.perf_counter() - record.started:.0f}s")
    print(summary_line(figures))


if __name__ == "__main__":
    main()
