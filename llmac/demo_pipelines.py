"""The demo's pipeline stages: DAPO, Critique-RL and MCTS expert iteration from the same SFT'd actor.

Each pipeline runs its own CPU testbed recipe (``DemoConfig.<pipeline>_recipe``) with the demo's actor,
task, engine and seed, as one stage of the demo (run once per key, resumed when interrupted; see
:mod:`llmac.demo_stages`), and reports the held-out figures it is judged by beside the SFT'd actor's.
A pipeline joins the demo with :func:`register_demo_pipeline`; ``DemoConfig.pipelines`` picks them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from llmac.config import ModelConfig, parse_config
from llmac.data.tasks import TaskConfig, load_task
from llmac.demo_stages import config_inputs, model_stage
from llmac.engines import EngineConfig
from llmac.fingerprints import inputs_key, model_fingerprint, stage_done, write_stage_stamp
from llmac.metrics_log import MetricsLog


@dataclass
class DemoRun:
    """What every pipeline stage shares: the SFT'd actor, the demo's task, engine and seed."""

    run_dir: Path
    actor: ModelConfig  # the SFT'd actor, with the demo's LoRA settings
    task: TaskConfig
    engine: EngineConfig
    seed: int
    sft_accuracy: float  # the SFT'd actor's held-out greedy accuracy, the baseline of every pipeline
    recipes: dict[str, str] = field(default_factory=dict)  # pipeline -> its recipe

    @property
    def actor_path(self) -> str:
        return self.actor.model_name_or_path

    def key(self, stage: str, **settings) -> str:
        """A stage key: the SFT'd actor's content, the demo's task, engine and LoRA, and ``settings``."""
        lora = self.actor.lora_settings()
        return inputs_key(stage=stage, actor=model_fingerprint(self.actor_path), task=config_inputs(self.task),
                          engine=config_inputs(self.engine), lora=lora and asdict(lora), **settings)  # fmt: skip

    def recipe_configs(self, pipeline: str, classes: tuple, overrides: Sequence[str]) -> tuple:
        """``classes`` filled from the pipeline's recipe, then the demo's ``overrides``."""
        argv = ["--config", self.recipes[pipeline], *overrides]
        return parse_config(classes, argv, prog=f"llmac demo ({pipeline})")


@dataclass
class PipelineReport:
    """A pipeline stage's figures (for ``demo_results.json``) and its lines in the demo's summary."""

    results: dict
    lines: list[str]


DemoPipeline = Callable[[DemoRun], PipelineReport]
DEMO_PIPELINES: dict[str, DemoPipeline] = {}


def register_demo_pipeline(name: str) -> Callable[[DemoPipeline], DemoPipeline]:
    """Add a pipeline stage to the demo under ``name`` (its recipe: ``DemoConfig.<name>_recipe``)."""

    def add(fn: DemoPipeline) -> DemoPipeline:
        DEMO_PIPELINES[name] = fn
        return fn

    return add


def run_demo_pipelines(run: DemoRun, names: Sequence[str]) -> dict[str, PipelineReport]:
    """Each named pipeline's stage, in order."""
    return {name: DEMO_PIPELINES[name](run) for name in names}


def _points(after: float, before: float) -> str:
    return f"{after:.1%} ({100 * (after - before):+.1f} points)"


def _json_stage(path: Path, key: str, compute: Callable[[], dict]) -> dict:
    """``compute()``'s figures, saved at ``path/metrics.json`` under ``key`` (reused while the key holds)."""
    metrics = path / "metrics.json"
    if stage_done(path, key, parts=()) and metrics.is_file():
        return json.loads(metrics.read_text())
    figures = compute()
    path.mkdir(parents=True, exist_ok=True)
    metrics.write_text(json.dumps(figures, indent=2) + "\n")
    write_stage_stamp(path, key)
    return figures


# -- DAPO ---------------------------------------------------------------------------------------
@register_demo_pipeline("dapo")
def dapo_pipeline(run: DemoRun) -> PipelineReport:
    """Direct Advantage Policy Optimization (Skywork; not ByteDance's DAPO): build + offline training."""
    from llmac.critic.labelling import MCLabelConfig
    from llmac.dapo.build import read_build_stats
    from llmac.dapo.config import DAPOBuildConfig, DAPOTrainConfig
    from llmac.dapo.trainer import run_dapo_train

    out = run.run_dir / "dapo"
    seed = str(run.seed)
    config, build, mc = run.recipe_configs(
        "dapo", (DAPOTrainConfig, DAPOBuildConfig, MCLabelConfig, TaskConfig, EngineConfig, ModelConfig),
        ["--output_dir", str(out / "run"), "--data_dir", str(out / "data"), "--critic_labels_dir", "null",
         "--shuffle_seed", seed, "--seed", seed, "--rounds", "1", "--progress", "false"],
    )[:3]  # fmt: skip
    config = replace(config, eval_every=config.eval_every or 10**9)  # at least at the start and the end
    key = run.key("dapo", train=config_inputs(config), build=config_inputs(build), mc=config_inputs(mc))
    model_stage(out, key, lambda: run_dapo_train(run.actor, config, build, mc, run.task, run.engine),
                parts=("run/actor",))  # fmt: skip
    evals = [r for r in MetricsLog(out / "run").read() if "eval_accuracy" in r]
    stats = read_build_stats(out / "data")
    after = evals[-1]["eval_accuracy"]
    results = {"held_out_accuracy": after, "gain": after - run.sft_accuracy, "build": stats,
               "curve": [(r["iteration"], r["eval_accuracy"]) for r in evals]}  # fmt: skip
    return PipelineReport(results, [
        "DAPO (Direct Advantage Policy Optimization; offline step advantages from MC values):",
        f"  {stats['states']} states from {stats['questions']} questions ({stats['completions']} completions); held-out greedy "
        f"accuracy {run.sft_accuracy:.1%} -> {_points(after, run.sft_accuracy)}",
    ])  # fmt: skip


# -- Critique-RL --------------------------------------------------------------------------------
@register_demo_pipeline("critique")
def critique_pipeline(run: DemoRun) -> PipelineReport:
    """A generative critic: SFT on oracle critiques, Critique-RL stage I, then critique -> refine."""
    from trl import SFTConfig

    from llmac.critique.config import CritiqueRLConfig
    from llmac.critique.evaluate import CritiqueEvalConfig, run_critique_eval
    from llmac.critique.refine import RefineConfig
    from llmac.critique.sft import CritiqueSFTRunConfig, run_critique_sft
    from llmac.critique.trainer import run_critique_rl

    out = run.run_dir / "critique"
    seed = str(run.seed)
    sft_run, sft_args = run.recipe_configs(
        "critique_sft", (CritiqueSFTRunConfig, SFTConfig, TaskConfig, EngineConfig),
        ["--actor", run.actor_path, "--critique_data_dir", str(out / "sft" / "data"),
         "--output_dir", str(out / "sft" / "model"), "--seed", seed, "--disable_tqdm", "true"],
    )[:2]  # fmt: skip
    sft_key = run.key("critique_sft", run=config_inputs(sft_run), sft=config_inputs(sft_args))
    model_stage(out / "sft", sft_key, lambda: run_critique_sft(sft_run, run.task, run.engine, sft_args),
                parts=("model",))  # fmt: skip

    (rl,) = run.recipe_configs(
        "critique_rl", (CritiqueRLConfig, ModelConfig, TaskConfig, EngineConfig),
        ["--actor", run.actor_path, "--output_dir", str(out / "rl"), "--seed", seed, "--progress", "false"],
    )[:1]  # fmt: skip
    critic_model = ModelConfig(model_name_or_path=str(out / "sft" / "model"))
    rl_key = run.key("critique_rl", critic=model_fingerprint(out / "sft" / "model"), rl=config_inputs(rl))
    model_stage(out / "rl", rl_key, lambda: run_critique_rl(critic_model, run.task, run.engine, rl),
                parts=("critic",))  # fmt: skip

    def evaluate(critic: Path) -> dict:
        config = CritiqueEvalConfig(actor=run.actor_path, critic=str(critic), output_dir=str(out / ".eval-work"),
                                    samples_per_problem=8, overwrite=True)  # fmt: skip
        refine = RefineConfig(critique_format=rl.critique_format, critique_max_new_tokens=rl.max_new_tokens,
                              refine_max_new_tokens=rl.refine_max_new_tokens, seed=run.seed)  # fmt: skip
        return run_critique_eval(config, refine, run.task, run.engine)

    figures = {}
    for name, critic in (("sft", out / "sft" / "model"), ("stage1", out / "rl" / "critic")):
        figures[name] = _json_stage(out / f"eval-{name}", run.key("critique_eval", critic=model_fingerprint(critic)),
                                    lambda critic=critic: evaluate(critic))  # fmt: skip
    lines = [
        "Critique-RL (a generative critic: SFT on oracle critiques, then RL stage I), on held-out solutions:"
    ]
    for name, metrics in figures.items():
        greedy, best = metrics["refine"]["greedy"], metrics.get("best_of_n", {})
        lines.append(
            f"  {name}: Acc@Dis {metrics['discrimination']['acc_dis']:.1%}; critique -> refine "
            f"{greedy['acc']:.1%} -> {_points(greedy['acc_refine'], greedy['acc'])}; "
            f"best-of-{best.get('n', '?')} by verdict {best.get('by_verdict', float('nan')):.1%} vs majority "
            f"{best.get('majority', float('nan')):.1%}"
        )  # fmt: skip
    return PipelineReport(figures, lines)


# -- MCTS expert iteration ----------------------------------------------------------------------
@register_demo_pipeline("mcts")
def mcts_pipeline(run: DemoRun) -> PipelineReport:
    """Rounds of tree search on the RL problems (verifier at the leaves), SFT on the verified solutions."""
    from llmac.engines import SamplingConfig, build_engine
    from llmac.evaluation import evaluate
    from llmac.mcts.expert_iteration import ExpertIterationConfig, run_expert_iteration
    from llmac.mcts.search import SearchConfig
    from llmac.rewards import answer_keys, math_rewards

    out = run.run_dir / "mcts"
    search, config = run.recipe_configs(
        "mcts", (SearchConfig, ExpertIterationConfig, ModelConfig, TaskConfig, EngineConfig),
        ["--output_dir", str(out / "run"), "--seed", str(run.seed), "--overwrite", "true"],
    )[:2]  # fmt: skip
    greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=config.rollout_max_new_tokens)

    def expert_iteration() -> dict:
        accuracy = []
        with build_engine(run.actor_path, run.engine) as engine:

            def held_out(result) -> None:
                metrics, _ = evaluate(engine, load_task(run.task, "eval"), greedy, math_rewards, answer_keys)
                accuracy.append(metrics.pass_at_1)

            rounds = run_expert_iteration(run.actor, run.task, search, config, engine, after_round=held_out)
        return {
            "rounds": [{**asdict(r), "held_out_accuracy": a} for r, a in zip(rounds, accuracy, strict=True)]
        }

    key = run.key("mcts", search=config_inputs(search), iteration=config_inputs(config))
    results = _json_stage(out, key, expert_iteration)
    lines = ["MCTS expert iteration (search with verified leaves, then SFT on the verified solutions):"]
    for r in results["rounds"]:
        lines.append(
            f"  round {r['round']}: {r['solved_questions']}/{r['questions']} problems solved, {r['sft_rows']} SFT "
            f"rows, {r['completions']} completions; held-out greedy {_points(r['held_out_accuracy'], run.sft_accuracy)}"
        )  # fmt: skip
    return PipelineReport(results, lines)


def pipeline_recipes(demo) -> dict[str, str]:
    """Every pipeline stage's recipe, from the demo config's ``<name>_recipe`` fields."""
    return {name: getattr(demo, f"{name}_recipe") for name in
            ("dapo", "critique_sft", "critique_rl", "mcts") if hasattr(demo, f"{name}_recipe")}  # fmt: skip
