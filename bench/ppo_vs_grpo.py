"""PPO with a step critic against TRL's GRPO: held-out accuracy for the same number of completions.

From the same SFT'd tiny actor (``--actor``, or ``<out>/actor`` trained once by ``llmac sft`` on
``recipes/sft/tiny_arithmetic.yaml``: ``bench_actor``'s few-step warm start solves almost no problem,
which leaves RL no signal), on the arithmetic task of ``recipes/ppo/tiny_arithmetic.yaml`` and with
its settings (learning rate, batch, sampling, read from the recipe), three arms train for the same
number of generated completions:

- ``ppo``: llmac PPO, step-level GAE with a step critic (``--critic``: an ``llmac critic train``
  output; without it the value head starts at zero);
- ``trl_grpo``: TRL's ``GRPOTrainer`` with its default loss and the same math reward, prompts,
  generation batch and optimizer steps (``bench/helpers/trl_grpo.py``);
- ``llmac_grpo``: llmac's trainer with GRPO group advantages and no critic, which separates the
  critic's effect (``ppo`` against it) from the trainer's (it against ``trl_grpo``).

Held-out accuracy is greedy accuracy on the recipe's held-out problems, decoded by llmac's vLLM
engine for every arm, at the start, every ``eval_every`` iterations' worth of completions and at the
end. Training time is each arm's training loop, generation included, without its set-up (model
loading, vLLM start-up) and without the held-out evaluations. Each arm of each seed runs in its own
process (a fresh vLLM engine and accelerate state) and leaves its folder in ``--out``; a rerun reuses
the arms that finished with the same settings. The last line printed is
``ppo_acc=<a> grpo_acc=<b> llmac_grpo_acc=<c> ppo_time_s=<t1> grpo_time_s=<t2>``: means over seeds
of the final accuracy and of the training seconds. Other jobs on the cores make the times noisy
(torch's threads spin against them; ``--threads 1`` can help).

    python bench/ppo_vs_grpo.py --quick --actor runs/demo/sft
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ARMS = ("ppo", "trl_grpo", "llmac_grpo")
QUICK_ITERATIONS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ITERATIONS} iterations, evaluated at start and end."
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="Comma-separated training seeds, one run per arm each (default 0,1,2; quick 0).",
    )
    parser.add_argument(
        "--out", default="runs/bench_ppo_vs_grpo", help="Folder of every run and the results."
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
        help="llmac iterations per arm (default: the recipe's; quick 4).",
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
        "--actor", default=None, help="The SFT'd actor folder (default: <out>/actor, SFT'd by --sft-recipe)."
    )
    parser.add_argument(
        "--sft-recipe",
        default=str(REPO / "recipes/sft/tiny_arithmetic.yaml"),
        help="Without --actor: the `llmac sft` recipe that trains <out>/actor (about 5 min on 2 cores).",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in each arm (default: torch's choice).",
    )
    parser.add_argument("--run-arm", default=None, help=argparse.SUPPRESS)  # internal: one arm, in a child
    return parser.parse_args(argv)


def load_recipe(argv: list[str]):
    """``(ModelConfig, TaskConfig, EngineConfig, PPOConfig)`` of a recipe and CLI-style overrides."""
    from llmac.config import parse_config
    from llmac.ppo.trainer import CONFIG_CLASSES

    return parse_config(CONFIG_CLASSES, argv)


def arm_argv(spec: dict) -> list[str]:
    """The recipe plus this arm's overrides, as ``llmac ppo`` would take them on the command line."""
    argv = ["--config", spec["recipe"], "--model_name_or_path", spec["actor"], "--output_dir", spec["dir"],
            "--seed", str(spec["seed"]), "--num_iterations", str(spec["iterations"]),
            "--eval_every", str(spec["eval_every"]), "--checkpoint_every", "0", "--progress", "false"]  # fmt: skip
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
    curve = eval_curve(out / "metrics.jsonl")
    return {
        "curve": curve,
        "completions": trainer.completions,
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def finished(spec: dict) -> dict | None:
    """The result of an arm that already ran to the end with exactly ``spec``, else None."""
    path = Path(spec["dir"]) / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("spec") == spec else None


def launch(spec: dict) -> dict:
    """Run one arm in a fresh process (output in ``<dir>/log.txt``) unless it already finished."""
    result = finished(spec)
    if result is not None:
        print(f"  {spec['arm']} seed {spec['seed']}: reusing {spec['dir']}")
        return result
    arm_dir = Path(spec["dir"])
    shutil.rmtree(arm_dir, ignore_errors=True)  # a crashed run restarts: its times would be partial
    arm_dir.mkdir(parents=True)
    write_json(arm_dir / "spec.json", spec)
    started = time.perf_counter()
    with (arm_dir / "log.txt").open("w") as log:
        code = subprocess.call([sys.executable, __file__, "--run-arm", str(arm_dir / "spec.json")],
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    if code != 0:
        tail = (arm_dir / "log.txt").read_text().splitlines()[-30:]
        raise RuntimeError(f"arm {spec['arm']} seed {spec['seed']} failed (exit {code}):\n" + "\n".join(tail))
    print(f"  {spec['arm']} seed {spec['seed']}: done in {time.perf_counter() - started:.0f}s ({arm_dir})")
    return finished(spec)


def sft_actor(actor: Path, recipe: Path) -> Path:
    """``actor``, SFT'd with ``llmac sft`` on ``recipe`` unless it is there (a crashed SFT resumes)."""
    if (actor / "config.json").is_file():  # written by the final save only (checkpoints are in subfolders)
        return actor
    actor.mkdir(parents=True, exist_ok=True)
    print(f"SFT of the actor with {recipe} into {actor} (log: {actor / 'sft_log.txt'})")
    started = time.perf_counter()
    command = [sys.executable, "-m", "llmac", "sft", "--config", str(recipe), "--output_dir", str(actor)]
    with (actor / "sft_log.txt").open("a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0:
        tail = (actor / "sft_log.txt").read_text().splitlines()[-30:]
        raise RuntimeError(f"SFT of the actor failed (exit {code}):\n" + "\n".join(tail))
    print(f"SFT done in {time.perf_counter() - started:.0f}s")
    return actor


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


def main() -> None:
    args = parse_args()
    if args.run_arm:
        run_arm(Path(args.run_arm))
        return
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show as they come, also in a log file
    wall = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.seeds = args.seeds or ("0" if args.quick else "0,1,2")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := set(arms) - set(ARMS):
        raise SystemExit(f"unknown arms {sorted(unknown)}; choose from {ARMS}")
    recipe = Path(args.recipe).resolve()
    _, task, engine, ppo = load_recipe(["--config", str(recipe)])
    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else ppo.num_iterations)
    eval_every = args.eval_every or (iterations if args.quick else ppo.eval_every)

    actor = (
        Path(args.actor).resolve()
        if args.actor
        else sft_actor(out / "actor", Path(args.sft_recipe).resolve())
    )
    critic = str(Path(args.critic).resolve()) if args.critic else None

    from trl import GRPOConfig

    trl_defaults = {
        name: GRPOConfig.__dataclass_fields__[name].default for name in ("loss_type", "beta", "epsilon")
    }
    per_iteration = ppo.prompts_per_iteration * ppo.samples_per_prompt
    print(f"actor: {actor}")
    print(f"ppo critic: {critic or 'none given: the value head starts at zero (value_model None)'}")
    print(f"recipe: {recipe} (task {task.task}, {task.num_eval} held-out problems, lr {ppo.learning_rate:g})")
    print(f"budget per arm: {iterations} iterations x {ppo.prompts_per_iteration} prompts x "
          f"{ppo.samples_per_prompt} samples = {iterations * per_iteration} completions, "
          f"max {ppo.max_new_tokens} tokens; held-out eval every {eval_every} iterations")  # fmt: skip
    print(f"llmac loss: clip {ppo.clip_low}/{ppo.clip_high}, {ppo.loss_aggregation} aggregation, "
          f"kl_coef {ppo.kl_coef}; rollouts on {engine.engine}")  # fmt: skip
    print(f"trl GRPO loss: TRL defaults loss_type={trl_defaults['loss_type']}, beta={trl_defaults['beta']}, "
          f"epsilon={trl_defaults['epsilon']}; rollouts with transformers generate (no vLLM on CPU)")  # fmt: skip
    print(f"seeds: {seeds}; folder: {out}")

    recipe_sha = hashlib.sha256(recipe.read_bytes()).hexdigest()[:16]
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            spec = {"arm": arm, "seed": seed, "actor": str(actor), "critic": critic if arm == "ppo" else None,
                    "recipe": str(recipe), "recipe_sha256": recipe_sha, "iterations": iterations,
                    "eval_every": eval_every, "threads": args.threads, "dir": str(out / f"seed{seed}" / arm)}  # fmt: skip
            results[arm].append(launch(spec))

    print()
    print(f"{'seed':>4}  {'arm':<11} {'acc@0':>6} {'acc@end':>7} {'completions':>11} {'train_s':>8} "
          f"{'ms/compl':>8} {'setup_s':>7} {'eval_s':>6}")  # fmt: skip
    for arm in arms:
        for seed, r in zip(seeds, results[arm], strict=True):
            print(f"{seed:>4}  {arm:<11} {r['curve'][0][1]:>6.3f} {r['curve'][-1][1]:>7.3f} {r['completions']:>11} "
                  f"{r['train_seconds']:>8.1f} {1e3 * r['train_seconds'] / r['completions']:>8.2f} "
                  f"{r['setup_seconds']:>7.1f} {r['eval_seconds']:>6.1f}")  # fmt: skip
    if len({r["completions"] for runs in results.values() for r in runs}) != 1:
        print("WARNING: the arms generated different numbers of completions")

    curves = mean_curves(results)
    print(f"\nheld-out greedy accuracy against completions generated (mean over seeds {args.seeds})")
    print(f"{'completions':>11}  " + "  ".join(f"{arm:>10}" for arm in arms))
    for c in sorted({c for curve in curves.values() for c, _ in curve}):
        row = {arm: dict(curves[arm]).get(c) for arm in arms}
        print(
            f"{c:>11}  " + "  ".join(f"{row[a]:>10.3f}" if row[a] is not None else f"{'-':>10}" for a in arms)
        )

    means = {arm: summary(runs) for arm, runs in results.items()}
    print(f"\nmeans over seeds {args.seeds}:")
    for arm, m in means.items():
        print(f"  {arm:<11} accuracy {m['initial_accuracy']:.3f} -> {m['accuracy']:.3f}, "
              f"train {m['train_seconds']:.1f}s ({m['ms_per_completion']:.2f} ms/completion)")  # fmt: skip
    if "ppo" in means and "trl_grpo" in means:
        ratio = means["trl_grpo"]["train_seconds"] / max(means["ppo"]["train_seconds"], 1e-9)
        print(f"  trl_grpo/ppo training time: {ratio:.2f}x")

    figure = plot(out, curves)
    write_json(out / "results.json", {"seeds": seeds, "recipe": str(recipe), "actor": str(actor), "critic": critic,
                                      "iterations": iterations, "eval_every": eval_every, "means": means,
                                      "curves": curves, "runs": results})  # fmt: skip
    print(f"results: {out / 'results.json'}" + (f"; figure: {figure}" if figure else ""))
    print(f"total {time.perf_counter() - wall:.0f}s")

    def mean(arm: str, key: str) -> float:
        return means[arm][key] if arm in means else float("nan")

    print(f"ppo_acc={mean('ppo', 'accuracy'):.3f} grpo_acc={mean('trl_grpo', 'accuracy'):.3f} "
          f"llmac_grpo_acc={mean('llmac_grpo', 'accuracy'):.3f} ppo_time_s={mean('ppo', 'train_seconds'):.1f} "
          f"grpo_time_s={mean('trl_grpo', 'train_seconds'):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
