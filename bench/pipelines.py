"""The pipelines' leaderboard: held-out accuracy of every RL arm for the same number of completions.

From the same SFT'd actor (``--actor``; by default one ``llmac sft`` of ``recipes/sft/tiny_mixed.yaml``,
the mixed-supervision testbed), every arm trains on the same RL prompts (the task's ``rl`` split:
fresh problems, final answers only) for the same number of generated completions, with the
settings of ``--recipe`` (default ``recipes/ppo/tiny_mixed.yaml``):

- ``ppo``: llmac PPO, step-level GAE over a step critic (``--critic``: an ``llmac critic train``
  output, e.g. the demo's ``runs/demo/critic``; without it the value head starts at zero);
- ``grpo``: llmac's trainer with GRPO group advantages and no critic;
- ``dapo``: Direct Advantage Policy Optimization (Skywork; not ByteDance's DAPO), two rounds of
  offline build (solutions and MC values of candidate steps, every rollout charged to the budget)
  and training (``bench/helpers/dapo_arm.py``);
- ``trl_grpo``: TRL's ``GRPOTrainer`` with its default loss and llmac's reward, prompts, generation
  batch, optimizer steps and learning-rate schedule (``bench/helpers/trl_grpo.py``);
- ``mcts_ei``: MCTS expert iteration, two rounds of search over fresh RL problems (verifier at the
  leaves, every sampled step and rollout charged as a completion) and SFT on the verified solutions
  (``bench/helpers/mcts_arm.py``);
- ``critique_refine``, ``critique_self_train`` (with ``--critique_model``, an ``llmac critique sft`` or
  ``train`` output): one critique -> refine round on the held-out answers, charged the critiques and
  refinements; critique-in-the-loop self-training within the budget (``bench/helpers/critique_arm.py``);
- ``base``: the SFT'd actor itself, the reference every arm starts from.

Later pipelines (MCTS expert iteration, Critique-RL refine) add their arm with ``register_arm``. Every arm is evaluated the same way
(:func:`llmac.rl.sampler.held_out_accuracy`: greedy and, with ``eval_samples``, sampled accuracy and
the share of direct answers on the task's held-out problems) at the start, every ``eval_every``
iterations' worth of completions and at the end. Training time is each arm's loop, generation
included, evaluations and set-up excluded.

All arms of all seeds run in this one process and share one vLLM engine, reset to the SFT'd actor's
weights before each arm (each arm's first evaluation must equal ``base``'s, which checks the reset).
An arm's result is kept in ``<out>/seed<s>/<arm>`` and reused by a rerun only when its trained actor
is complete and it was made from the same inputs (the actor's and critic's content, the recipe and
overrides, llmac's code version and this bench's code). Any other ``--<field> <value>`` is a recipe
override given to every arm (``--learning_rate 3e-5``).

``--quick`` is a smoke run of the whole comparison: a small actor warm-started in seconds (cached in
``<out>``), 2 iterations of 16 prompts x 4 samples, 64 held-out problems (greedy only); its
accuracies say nothing about the methods. Results go to ``bench/results/pipelines[-quick].json`` and
``.png`` (accuracy against completions, mean over seeds). The last line printed is
``ppo_acc=<a> grpo_acc=<b> trl_grpo_acc=<c> base_acc=<d> ...``: means over seeds of the final greedy
accuracy, then the sampled ones and the training seconds.

    python bench/pipelines.py --quick
    python bench/pipelines.py --actor runs/demo/sft --critic runs/demo/critic
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import numpy as np  # noqa: E402
from helpers.cache import cached_model, finish_artifact, keyed_folder, start_artifact  # noqa: E402
from helpers.results import BenchRecord, add_results_arg, start_output, summary_line  # noqa: E402

from llmac.files import write_text_atomically  # noqa: E402
from llmac.fingerprints import inputs_key, is_complete_model, model_fingerprint, stage_done  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUICK_ITERATIONS = 2
QUICK_SETTINGS = ["--num_train", "2000", "--num_eval", "64", "--eval_samples", "0", "--prompts_per_iteration",
                  "16", "--samples_per_prompt", "4", "--mini_batch_size", "32"]  # fmt: skip
QUICK_ACTOR = {"train_steps": 150, "batch_size": 32, "learning_rate": 3e-3, "problems": 2000, "seed": 0}
# Fields the bench sets per arm; a recipe override may not change them.
BENCH_FIELDS = ("config", "model_name_or_path", "output_dir", "seed", "num_iterations", "eval_every",
                "checkpoint_every", "progress", "advantage_estimator", "value_model", "overwrite")  # fmt: skip
BENCH_CODE = (Path(__file__), REPO / "bench/helpers/trl_grpo.py", REPO / "bench/helpers/dapo_arm.py",
              REPO / "bench/helpers/critique_arm.py", REPO / "bench/helpers/mcts_arm.py")  # fmt: skip
FIGURES = (
    "eval_accuracy",
    "eval_sampled_accuracy",
    "eval_direct_answer_share",
    "eval_sampled_direct_answer_share",
)

Configs = tuple  # (ModelConfig, TaskConfig, EngineConfig, PPOConfig) of one arm
ArmFn = Callable[[Configs, "object", "str | None"], dict]
ARMS: dict[str, ArmFn] = {}


def register_arm(name: str) -> Callable[[ArmFn], ArmFn]:
    """Add an arm: ``fn(configs, engine, critic) -> result`` trains from the engine's current weights."""

    def add(fn: ArmFn) -> ArmFn:
        ARMS[name] = fn
        return fn

    return add


def run_llmac(configs: Configs, engine, estimator: str, value_model: str | None) -> dict:
    """llmac's PPO trainer with ``estimator`` on the shared engine; its curve and training seconds."""
    from llmac.ppo.trainer import PPOTrainer

    model_config, task_config, engine_config, ppo = configs
    ppo = replace(ppo, advantage_estimator=estimator, value_model=value_model)
    started = time.perf_counter()
    trainer = PPOTrainer(model_config, task_config, engine_config, ppo, engine=engine)
    setup_seconds = time.perf_counter() - started
    out = trainer.train()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [{"completions": r["completions"], **{k: r[k] for k in FIGURES if k in r}}
             for r in records if "eval_accuracy" in r]  # fmt: skip
    return {
        "curve": curve,
        "completions": trainer.completions,
        "learning_rates": [r["learning_rate"] for r in records if "learning_rate" in r],
        "setup_seconds": setup_seconds,
        "train_seconds": sum(r.get("iteration_seconds", 0.0) for r in records),
        "eval_seconds": sum(r.get("eval_seconds", 0.0) for r in records),
    }


@register_arm("ppo")
def ppo_arm(configs: Configs, engine, critic: str | None) -> dict:
    return run_llmac(configs, engine, "step_gae", critic)


@register_arm("grpo")
def grpo_arm(configs: Configs, engine, critic: str | None) -> dict:
    return run_llmac(configs, engine, "grpo", None)


@register_arm("dapo")
def dapo_arm(configs: Configs, engine, critic: str | None) -> dict:
    from helpers.dapo_arm import run_dapo_arm

    return run_dapo_arm(configs, engine, critic=None)  # DAPO's values: its own MC estimates


@register_arm("mcts_ei")
def mcts_ei_arm(configs: Configs, engine, critic: str | None) -> dict:
    from helpers.mcts_arm import run_mcts_arm

    return run_mcts_arm(configs, engine, critic=None)  # leaf values: verified rollouts


@register_arm("critique_refine")
def critique_refine_arm(configs: Configs, engine, critic: str | None) -> dict:
    from helpers.critique_arm import run_critique_refine_arm

    return run_critique_refine_arm(configs, engine, critic)  # critic: --critique_model


@register_arm("critique_self_train")
def critique_self_train_arm(configs: Configs, engine, critic: str | None) -> dict:
    from helpers.critique_arm import run_critique_self_train_arm

    return run_critique_self_train_arm(configs, engine, critic)  # critic: --critique_model


# Arms that need a critique model (--critique_model); they run by default only when it is given.
CRITIQUE_ARMS = ("critique_refine", "critique_self_train")


@register_arm("trl_grpo")
def trl_grpo_arm(configs: Configs, engine, critic: str | None) -> dict:
    from helpers.trl_grpo import run_trl_grpo

    model_config, task_config, _, ppo = configs
    return run_trl_grpo(model_config, task_config, ppo, engine)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The bench's arguments; ``overrides`` holds every ``--field value`` it does not know (recipe fields)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--quick", action="store_true",
                        help=f"Smoke run: warm-started actor, {QUICK_ITERATIONS} small iterations.")  # fmt: skip
    parser.add_argument("--seeds", default=None, help="Comma-separated seeds (default 0,1,2; quick 0).")
    parser.add_argument("--out", default="runs/bench_pipelines", help="Folder of every run and cached actor.")
    parser.add_argument(
        "--recipe", default=str(REPO / "recipes/ppo/tiny_mixed.yaml"), help="llmac RL recipe."
    )
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"Iterations per arm (default: the recipe's; quick {QUICK_ITERATIONS}).")  # fmt: skip
    parser.add_argument("--eval-every", type=int, default=None,
                        help="Iterations between evaluations (default: the recipe's; quick: the end).")  # fmt: skip
    parser.add_argument(
        "--critic", default=None, help="Step critic of the ppo arm (default: value head at zero)."
    )
    parser.add_argument("--critique_model", default=None,
                        help=f"Critique model of the {' and '.join(CRITIQUE_ARMS)} arms (llmac critique sft/train).")  # fmt: skip
    parser.add_argument("--arms", default=None,
                        help="Comma-separated arms (default: all registered; the critique ones with --critique_model).")  # fmt: skip
    parser.add_argument("--actor", default=None,
                        help="The SFT'd actor (default: SFT'd once by --sft-recipe into <out>; quick: warm-started).")  # fmt: skip
    parser.add_argument("--sft-recipe", default=str(REPO / "recipes/sft/tiny_mixed.yaml"),
                        help="Without --actor: the `llmac sft` recipe of the actor (about 8 min on 2 cores).")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    add_results_arg(parser)
    args, overrides = parser.parse_known_args(argv)
    for item in overrides:
        name = item[2:].partition("=")[0] if item.startswith("--") else None
        if name in BENCH_FIELDS:
            parser.error(f"--{name} is set by the bench for each arm; it cannot be overridden")
    args.overrides = overrides
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",") if s.strip()]
    default_arms = [a for a in ARMS if args.critique_model or a not in CRITIQUE_ARMS]
    args.arms = [a.strip() for a in (args.arms or ",".join(default_arms)).split(",") if a.strip()]
    if unknown := sorted(set(args.arms) - set(ARMS)):
        parser.error(f"unknown arms {unknown}; choose from {', '.join(ARMS)}")
    if (needing := [a for a in args.arms if a in CRITIQUE_ARMS]) and not args.critique_model:
        parser.error(
            f"arms {needing} need a critique model: give --critique_model PATH (`llmac critique sft` output)"
        )
    return args


def load_recipe(argv: list[str]) -> Configs:
    """``(ModelConfig, TaskConfig, EngineConfig, PPOConfig)`` of a recipe and CLI-style overrides."""
    from llmac.config import parse_config
    from llmac.ppo.trainer import CONFIG_CLASSES

    return parse_config(CONFIG_CLASSES, argv, prog="bench/pipelines.py")


def arm_argv(spec: dict) -> list[str]:
    """The recipe, its overrides and this arm's run settings, as ``llmac ppo`` would take them."""
    return ["--config", spec["recipe"], *spec["settings"], "--model_name_or_path", spec["actor"],
            "--output_dir", str(Path(spec["dir"]) / "run"), "--seed", str(spec["seed"]),
            "--num_iterations", str(spec["iterations"]), "--eval_every", str(spec["eval_every"]),
            "--checkpoint_every", "0", "--progress", "false"]  # fmt: skip


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


class SharedEngine:
    """One rollout engine for every arm, put back to the SFT'd actor's weights before each."""

    def __init__(self, actor: Path, engine_config) -> None:
        from llmac.engines import build_engine
        from llmac.models import load_actor

        self.engine = build_engine(actor, engine_config)
        self.initial = {k: v.clone() for k, v in load_actor(actor, "float32").state_dict().items()}

    def reset(self):
        self.engine.load_weights(dict(self.initial))
        return self.engine

    def close(self) -> None:
        self.engine.close()


def run_arm(spec: dict, shared: SharedEngine, critic: str | None) -> dict:
    """One arm of one seed, unless a finished one of the same inputs is there; its result."""
    result = finished(spec)
    if result is not None:
        print(f"  {spec['arm']} seed {spec['seed']}: reusing {spec['dir']} (same inputs, complete)")
        return result
    arm_dir, key = Path(spec["dir"]), spec_key(spec)
    start_artifact(arm_dir, key, arm=spec["arm"], seed=spec["seed"])  # a crashed run restarts afresh
    started = time.perf_counter()
    result = {"spec": spec, **ARMS[spec["arm"]](load_recipe(arm_argv(spec)), shared.reset(), critic)}
    write_text_atomically(arm_dir / "result.json", json.dumps(result, indent=1))
    finish_artifact(arm_dir, key, arm=spec["arm"], seed=spec["seed"])
    print(f"  {spec['arm']} seed {spec['seed']}: {result['curve'][0]['eval_accuracy']:.3f} -> "
          f"{result['curve'][-1]['eval_accuracy']:.3f} greedy in {time.perf_counter() - started:.0f}s")  # fmt: skip
    return result


def base_result(engine, configs: Configs) -> dict:
    """The SFT'd actor's held-out figures (the ``base`` reference, at 0 completions)."""
    from llmac.data.tasks import load_task
    from llmac.models import load_tokenizer
    from llmac.rewards.registry import get_reward_fn
    from llmac.rl.sampler import Prompts, SamplerSettings, held_out_accuracy

    model_config, task_config, _, ppo = configs
    held_out = Prompts.tokenize(load_tokenizer(model_config.model_name_or_path), load_task(task_config, "eval"),
                                ppo.max_prompt_length)  # fmt: skip
    figures = held_out_accuracy(engine, held_out, SamplerSettings.of(ppo), get_reward_fn(ppo.reward))
    return {"curve": [{"completions": 0, **figures}], "completions": 0, "train_seconds": 0.0}


def sft_actor(out: Path, recipe: Path) -> Path:
    """The actor ``llmac sft`` trains on ``recipe`` (in a child process), once per recipe and llmac version."""
    import subprocess

    from llmac.fingerprints import write_stage_stamp

    key = inputs_key(kind="sft-actor", recipe_sha256=hashlib.sha256(recipe.read_bytes()).hexdigest())
    actor = keyed_folder(out, "sft-actor", key)
    if stage_done(actor, key, kind="model"):
        return actor
    print(f"SFT of the actor with {recipe} into {actor} (log: {actor}.log)")
    command = [sys.executable, "-m", "llmac", "sft", "--config", str(recipe), "--output_dir", str(actor)]
    with Path(f"{actor}.log").open("a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if code != 0 or not is_complete_model(actor):
        tail = Path(f"{actor}.log").read_text().splitlines()[-30:]
        raise RuntimeError(f"SFT of the actor failed (exit {code}):\n" + "\n".join(tail))
    write_stage_stamp(actor, key, recipe=str(recipe))
    return actor


def quick_actor(out: Path) -> Path:
    """A small actor warm-started for a few hundred next-token steps (seconds), cached by its settings."""
    key = inputs_key(kind="quick-actor", **QUICK_ACTOR)

    def build(folder: Path) -> None:
        from llmac.data import arithmetic_dataset
        from llmac.models import TinyModelConfig, warm_tiny_actor

        rows = arithmetic_dataset(QUICK_ACTOR["problems"], seed=QUICK_ACTOR["seed"] + 1)
        warm_tiny_actor(rows["question"], rows["solution"], folder, QUICK_ACTOR["train_steps"],
                        TinyModelConfig(seed=QUICK_ACTOR["seed"]), QUICK_ACTOR["batch_size"],
                        QUICK_ACTOR["learning_rate"])  # fmt: skip

    actor, _ = cached_model(keyed_folder(out, "quick-actor", key), key, build, **QUICK_ACTOR)
    return actor


def checked_model(path: str, what: str) -> Path:
    folder = Path(path).resolve()
    if not is_complete_model(folder):
        raise SystemExit(f"{what} {folder} is not a complete saved model (config, weights, tokenizer)")
    return folder


def mean_curve(runs: list[dict], figure: str) -> list[tuple[int, float]]:
    """``(completions, mean of figure over the runs evaluated there)``, in order of completions.

    Runs evaluated equally often whose counts differ (DAPO's builds overshoot their share by up to a
    chunk, by seed) are averaged evaluation by evaluation, at their mean (rounded) completion count.
    """
    curves = [[(int(p["completions"]), p[figure]) for p in run["curve"] if figure in p] for run in runs]
    curves = [curve for curve in curves if curve]
    if len(curves) > 1 and len({len(curve) for curve in curves}) == 1:
        return [
            (round(float(np.mean([c for c, _ in same]))), float(np.mean([a for _, a in same])))
            for same in zip(*curves, strict=True)
        ]
    points: dict[int, list[float]] = {}
    for curve in curves:
        for completions, value in curve:
            points.setdefault(completions, []).append(value)
    return [(c, float(np.mean(v))) for c, v in sorted(points.items())]


def completions_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated completion count whose accuracy is at least ``target``."""
    return next((c for c, a in curve if a >= target - 1e-12), None)


def verdicts(curves: dict[str, list[tuple[int, float]]]) -> dict:
    """The issue's targets on the mean greedy curves: PPO's gain over base, against TRL at every point,
    and the completions PPO needs to reach GRPO's final accuracy."""
    out: dict = {}
    base = curves["base"][0][1] if curves.get("base") else None
    ppo = curves.get("ppo")
    if ppo and base is not None:
        out["ppo_gain_points"] = 100 * (ppo[-1][1] - base)
    if ppo and curves.get("trl_grpo"):
        trl = dict(curves["trl_grpo"])
        out["ppo_minus_trl_points"] = [(c, 100 * (a - trl[c])) for c, a in ppo if c in trl]
        out["ppo_at_least_trl_everywhere"] = all(d >= 0 for _, d in out["ppo_minus_trl_points"])
    if ppo and curves.get("grpo"):
        out["grpo_final"] = curves["grpo"][-1][1]
        out["ppo_completions_to_grpo_final"] = completions_to_reach(ppo, curves["grpo"][-1][1])
        out["grpo_completions_to_final"] = curves["grpo"][-1][0]
    return out


def plot(curves_by_figure: dict[str, dict], out: Path, png: Path) -> list[Path]:
    """Mean curves as run folders (``<out>/mean/<arm>``) and one comparison PNG per figure."""
    from llmac.plot import compare_runs

    paths = []
    for figure, curves in curves_by_figure.items():
        if not any(curves.values()):  # e.g. no sampled evaluation (eval_samples 0)
            continue
        dirs = []
        for arm, curve in curves.items():
            folder = out / "mean" / arm
            folder.mkdir(parents=True, exist_ok=True)
            lines = [
                json.dumps({"iteration": i, "completions": c, figure: a}) for i, (c, a) in enumerate(curve)
            ]
            (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            dirs.append(folder)
        target = png if figure == "eval_accuracy" else png.with_name(f"{png.stem}-{figure}.png")
        paths.append(compare_runs(dirs, target, metric=figure, x="completions"))
    return paths


def print_curves(curves: dict[str, list[tuple[int, float]]], title: str) -> None:
    print(f"\n{title}")
    arms = list(curves)
    print(f"{'completions':>11}  " + "  ".join(f"{arm:>9}" for arm in arms))
    for c in sorted({c for curve in curves.values() for c, _ in curve}):
        row = [dict(curves[arm]).get(c) for arm in arms]
        print(f"{c:>11}  " + "  ".join(f"{v:>9.3f}" if v is not None else f"{'-':>9}" for v in row))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start_output(args.threads)
    record = BenchRecord("pipelines", args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    recipe = Path(args.recipe).resolve()
    settings = (QUICK_SETTINGS if args.quick else []) + args.overrides
    _, task, engine_config, ppo = load_recipe(
        ["--config", str(recipe), *settings]
    )  # refuses bad overrides now
    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else ppo.num_iterations)
    eval_every = args.eval_every or (iterations if args.quick else ppo.eval_every)
    if args.actor:
        actor = checked_model(args.actor, "--actor")
    else:
        actor = quick_actor(out) if args.quick else sft_actor(out, Path(args.sft_recipe).resolve())
    critic = str(checked_model(args.critic, "--critic")) if args.critic else None
    critique_model = (
        str(checked_model(args.critique_model, "--critique_model")) if args.critique_model else None
    )
    budget = iterations * ppo.prompts_per_iteration * ppo.samples_per_prompt
    print(f"actor {actor}; ppo critic: {critic or 'none (value head from zero)'}")
    print(f"recipe {recipe} (task {task.task}, {task.num_eval} held-out problems, lr {ppo.learning_rate:g} "
          f"{ppo.lr_scheduler_type}); overrides: {' '.join(settings) or 'none'}")  # fmt: skip
    print(f"per arm: {iterations} iterations x {ppo.prompts_per_iteration} prompts x {ppo.samples_per_prompt} "
          f"samples = {budget} completions; eval every {eval_every}; seeds {args.seeds}; arms {args.arms}")  # fmt: skip

    shared = {"actor": str(actor), "actor_fingerprint": model_fingerprint(actor), "recipe": str(recipe),
              "recipe_sha256": hashlib.sha256(recipe.read_bytes()).hexdigest(), "settings": settings,
              "iterations": iterations, "eval_every": eval_every,
              "bench_code_sha256": hashlib.sha256(b"".join(p.read_bytes() for p in BENCH_CODE)).hexdigest()}  # fmt: skip
    engine = SharedEngine(actor, engine_config)
    results: dict[str, list[dict]] = {"base": [], **{arm: [] for arm in args.arms}}
    try:
        for seed in args.seeds:
            base_configs = load_recipe(arm_argv({**shared, "seed": seed, "dir": str(out / "base")}))
            results["base"].append(base_result(engine.reset(), base_configs))
            for arm in args.arms:
                arm_critic = critique_model if arm in CRITIQUE_ARMS else critic if arm == "ppo" else None
                spec = {"arm": arm, "seed": seed, **shared, "critic": arm_critic,
                        "critic_fingerprint": model_fingerprint(Path(arm_critic)) if arm_critic else None,
                        "dir": str(out / f"seed{seed}" / arm)}  # fmt: skip
                result = run_arm(spec, engine, spec["critic"])
                start, base = (
                    result["curve"][0]["eval_accuracy"],
                    results["base"][-1]["curve"][0]["eval_accuracy"],
                )
                if abs(start - base) > 1e-9:
                    raise RuntimeError(f"{arm} seed {seed} started at {start} greedy, not base's {base}")
                results[arm].append(result)
    finally:
        engine.close()

    curves = {
        figure: {arm: mean_curve(runs, figure) for arm, runs in results.items()} for figure in FIGURES[:2]
    }
    print_curves(
        curves["eval_accuracy"], f"held-out greedy accuracy against completions (mean of seeds {args.seeds})"
    )
    print_curves(curves["eval_sampled_accuracy"], "held-out sampled accuracy (T=1)")
    targets = verdicts(curves["eval_accuracy"])
    print(f"\ntargets: {json.dumps(targets)}")
    png = record.path.with_suffix(".png")
    figures_png = plot(curves, out, png)
    times = {arm: float(np.mean([r["train_seconds"] for r in runs])) for arm, runs in results.items()}
    order = [
        *args.arms,
        "base",
    ]  # the last line starts ppo_acc=... grpo_acc=... trl_grpo_acc=... base_acc=...
    figures = {f"{arm}_acc": curves["eval_accuracy"][arm][-1][1] for arm in order}
    figures |= {f"{arm}_sampled_acc": curves["eval_sampled_accuracy"][arm][-1][1]
                for arm in order if curves["eval_sampled_accuracy"][arm]}  # fmt: skip
    figures |= {f"{arm}_time_s": times[arm] for arm in args.arms}
    details = {"seeds": args.seeds, "actor": str(actor), "critic": critic, "recipe": str(recipe),
               "settings": settings, "iterations": iterations, "eval_every": eval_every,
               "completions_per_arm": budget, "curves": curves, "targets": targets, "runs": results}  # fmt: skip
    path = record.save(figures, details)
    print(f"results: {path}; figures: {', '.join(str(p) for p in figures_png)}")
    print(f"total {time.perf_counter() - record.started:.0f}s")
    print(summary_line(figures))


if __name__ == "__main__":
    main()
