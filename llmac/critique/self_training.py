"""``llmac critique self-train``: critique-in-the-loop self-training (AutoMathCritique, arXiv 2411.16579).

Each iteration, top to bottom (:func:`self_train_iteration`):

1. the current actor samples ``samples_per_problem`` solutions of each of ``num_problems`` training
   problems (fresh ones every iteration, the task's ``split``);
2. the critique model critiques every solution and the actor refines the ones it rejects
   (:func:`llmac.critique.refine.critique_and_refine`, every turn recorded in ``iteration-<k>/turns``);
3. the keep rule (:func:`keep_rule`, correctness by the verifier, never by the critic): the original
   solution if it is correct, else the refined one if that is correct, else nothing;
4. ``llmac sft``'s training (:func:`llmac.sft.run_sft`, TRL's SFTTrainer with the recipe's ``SFTConfig``)
   trains the actor on the kept solutions: by default the previous iteration's actor on this
   iteration's solutions, with ``accumulate`` the starting actor on every solution kept so far;
5. the new actor goes into its engine and is evaluated on the task's held-out problems
   (:func:`llmac.rl.sampler.held_out_accuracy`, as every RL pipeline is).

The run folder (``SFTConfig.output_dir``) holds ``iteration-<k>/{turns,kept,actor,metrics.json}`` and
``metrics.jsonl`` (iteration 0 is the starting actor's evaluation). A rerun resumes after the last
finished iteration, when it was made from the same inputs (``inputs.json``: settings and the two
models' fingerprints; ``num_iterations`` may grow). The actor and the critic each have a rollout engine,
built from one ``EngineConfig`` (the critic's is never trained; the actor's takes each iteration's new
weights). It runs on one process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import Dataset, concatenate_datasets
from trl import SFTConfig

from llmac.config import ModelConfig, option, parse_config
from llmac.critique.format import get_critique_format
from llmac.critique.refine import DEFAULT_REWRITE_TEMPLATE, RefineConfig, critique_and_refine
from llmac.data.loading import format_prompt, load_records
from llmac.data.tasks import SPLITS, TaskConfig, load_task
from llmac.distributed import end_process_group
from llmac.engines import EngineConfig, RolloutEngine, SamplingConfig, build_engine
from llmac.errors import LlmacError, OutputError
from llmac.files import write_text_atomically
from llmac.fingerprints import is_complete_model, model_fingerprint
from llmac.outputs import OutputConfig, finish_output, prepare_output
from llmac.rewards.registry import RewardFn, get_reward_fn
from llmac.rl.sampler import Prompts, SamplerSettings, held_out_accuracy
from llmac.rollouts import save_dataset_atomically
from llmac.sft import run_sft
from llmac.validation import check_fields, require

logger = logging.getLogger(__name__)

COMMAND = "critique self-train"
# Columns of a kept-solutions dataset: what `llmac sft` reads (question, answer, solution) and provenance.
KEPT_COLUMNS = ("question", "answer", "solution", "source", "problem_index", "sample_index")
# Held-out prompts are never dropped for length here: the engine's own limit applies.
_NO_PROMPT_CAP = 1 << 30


@dataclass
class SelfTrainConfig:
    """Which actor trains under which critique model, on how many problems, for how many iterations."""

    actor: str = option("", "The actor to improve (a saved model folder, e.g. the SFT'd actor).")
    critic: str = option(
        "", "The critique model (a saved model folder: `llmac critique sft` or `train` output)."
    )
    split: str = option("rl", "Task split whose problems (question and answer) are solved.", choices=SPLITS)
    num_iterations: int = option(
        2, "Self-training iterations (sample, critique, refine, keep, SFT).", range="[1, inf)"
    )
    num_problems: int = option(
        1000,
        "Problems per iteration; iteration k takes the next ones of the split (wrapping around).",
        range="[1, inf)",
    )
    samples_per_problem: int = option(4, "k: actor solutions per problem.", range="[1, inf)")
    solution_temperature: float = option(1.0, "Temperature of the actor's solutions.", range="[0, inf)")
    solution_max_new_tokens: int = option(96, "Tokens per solution at most.", range="[1, inf)")
    answer_reward: str = option(
        "math",
        "What judges correctness (the keep rule and the evaluation): a reward name or 'module:function'.",
    )
    deduplicate: bool = option(True, "Keep each distinct (question, solution) pair once per iteration.")
    accumulate: bool = option(
        False,
        "False: each iteration trains the previous iteration's actor on its own kept solutions; True: "
        "each trains the starting actor on every solution kept so far.",
    )
    eval_samples: int = option(
        0, "Held-out evaluation: sampled solutions per problem besides the greedy one (0: greedy only).",
        range="[0, inf)",
    )  # fmt: skip
    # -- the critique -> refine step (llmac.critique.refine.RefineConfig; its seed is SFTConfig's) ----
    refine_mode: str = option(
        "regenerate",
        "'regenerate' (continue from the steps before the first flagged one; any model) or 'rewrite' "
        "(a new solution following the critique; instruction-tuned actors).",
        choices=("regenerate", "rewrite"),
    )
    refine_rounds: int = option(1, "Critique -> refine rounds at most per solution.", range="[1, inf)")
    critique_format: str = option("compact", "Critique layout: 'compact' (tiny CPU model) or 'verbose'.")
    critique_temperature: float = option(0.0, "Critic sampling temperature (0 = greedy).", range="[0, inf)")
    critique_max_new_tokens: int = option(128, "Tokens per critique at most.", range="[1, inf)")
    refine_temperature: float = option(
        1.0,
        "Actor temperature when refining (regenerate mode: 0 repeats the flagged step).",
        range="[0, inf)",
    )
    refine_max_new_tokens: int = option(96, "Tokens per refinement at most.", range="[1, inf)")
    rewrite_template: str = option(
        DEFAULT_REWRITE_TEMPLATE,
        "refine_mode=rewrite: the request, with {question}, {solution} and {critique}.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.actor) and bool(self.critic), "give both --actor and --critic model folders")
        get_critique_format(self.critique_format)  # a ConfigError naming the known formats

    def refine_config(self, seed: int) -> RefineConfig:
        """The critique -> refine loop's settings."""
        return RefineConfig(
            mode=self.refine_mode,
            rounds=self.refine_rounds,
            critique_format=self.critique_format,
            critique_temperature=self.critique_temperature,
            critique_max_new_tokens=self.critique_max_new_tokens,
            refine_temperature=self.refine_temperature,
            refine_max_new_tokens=self.refine_max_new_tokens,
            rewrite_template=self.rewrite_template,
            seed=seed,
        )


# ------------------------------------------------------------------------------------ the keep rule


def keep_rule(correct: bool, refined_correct: bool) -> str | None:
    """Which solution of one sample trains the actor: ``"original"`` if it is correct, else ``"refined"``
    if the refinement is correct, else None (dropped)."""
    if correct:
        return "original"
    return "refined" if refined_correct else None


def kept_solutions(turns: Dataset, deduplicate: bool = True) -> Dataset:
    """The solutions :func:`keep_rule` keeps from a turns dataset (:data:`llmac.critique.refine.TURN_COLUMNS`):
    per (problem, sample), the first turn's solution and correctness against the last turn's refined
    ones. Columns :data:`KEPT_COLUMNS`, ordered by problem then sample."""
    first: dict[tuple[int, int], dict] = {}
    last: dict[tuple[int, int], dict] = {}
    for row in turns:
        key = (row["problem_index"], row["sample_index"])
        first.setdefault(key, row)
        last[key] = row
    rows: dict[str, list] = {column: [] for column in KEPT_COLUMNS}
    seen: set[tuple[str, str]] = set()
    for key in sorted(first):
        original, final = first[key], last[key]
        if original["correct"] is None:
            raise ValueError(
                "kept_solutions: the turns have no correctness (run the loop with a reward function)"
            )
        source = keep_rule(bool(original["correct"]), bool(final["refined_correct"]))
        if source is None:
            continue
        solution = original["solution"] if source == "original" else final["refined_solution"]
        if deduplicate and (original["question"], solution) in seen:
            continue
        seen.add((original["question"], solution))
        values = (original["question"], original["answer"], solution, source, *key)
        for column, value in zip(KEPT_COLUMNS, values, strict=True):
            rows[column].append(value)
    return Dataset.from_dict(rows)


# ------------------------------------------------------------------------------------ one iteration


@dataclass
class Collected:
    """What one round of sampling, critiquing and refining gave."""

    turns: Dataset
    kept: Dataset
    completions: int  # generated: solutions, critiques and refinements
    stats: dict


def collect_kept(
    actor: RolloutEngine,
    critic: RolloutEngine,
    questions: Sequence[str],
    answers: Sequence[str],
    config: SelfTrainConfig,
    reward_fn: RewardFn,
    seed: int,
) -> Collected:
    """Sample k solutions per question, critique and refine them, and apply the keep rule."""
    k = config.samples_per_problem
    sampling = SamplingConfig(
        n=k, temperature=config.solution_temperature, max_new_tokens=config.solution_max_new_tokens, seed=seed
    )
    groups = actor.generate([format_prompt(actor.tokenizer, q) for q in questions], sampling)
    texts = [c.text for group in groups for c in group]
    repeated = [q for q in questions for _ in range(k)]
    golds = [str(a) for a in answers for _ in range(k)]
    turns = critique_and_refine(actor, critic, repeated, texts, config.refine_config(seed), golds, reward_fn)
    kept = kept_solutions(turns, config.deduplicate)
    refinements = sum(list(turns["refined"]))
    first = [r for r in turns if r["round"] == 0]
    last = {(r["problem_index"], r["sample_index"]): r for r in turns}
    stats = {
        "problems": len(questions),
        "solutions": len(texts),
        "critiques": len(turns),
        "refinements": refinements,
        "completions": len(texts) + len(turns) + refinements,
        "solution_accuracy": sum(bool(r["correct"]) for r in first) / len(first),
        "refined_accuracy": sum(bool(r["refined_correct"]) for r in last.values()) / len(last),
        "kept": len(kept),
        "kept_original": list(kept["source"]).count("original"),
        "kept_refined": list(kept["source"]).count("refined"),
    }
    return Collected(turns, kept, stats["completions"], stats)


def iteration_rows(rows: Dataset, iteration: int, size: int) -> Dataset:
    """The problems of ``iteration`` (1-based): the next ``size`` rows of ``rows``, wrapping around."""
    start = (iteration - 1) * size
    return rows.select([(start + i) % len(rows) for i in range(min(size, len(rows)))])


def sft_on_kept(model_config: ModelConfig, data_dir: Path, args: SFTConfig, output_dir: Path) -> Path:
    """``llmac sft``'s training of ``model_config``'s model on the kept solutions in ``data_dir``; its folder."""
    task = TaskConfig(
        task="file", train_path=str(data_dir), solution_field="solution", num_train=0, answer_format="plain"
    )
    run_output = args.output_dir
    args.output_dir = str(output_dir)
    try:
        return run_sft(model_config, task, args)
    finally:
        args.output_dir = run_output


def load_actor_weights(engine: RolloutEngine, actor: Path) -> None:
    """Put the saved actor's weights into its engine."""
    from llmac.models import load_actor

    engine.load_weights(dict(load_actor(actor, "float32").state_dict()))


def held_out_figures(
    engine: RolloutEngine, rows: Dataset, config: SelfTrainConfig, reward_fn: RewardFn, seed: int
) -> dict[str, float]:
    """Greedy (and sampled) held-out accuracy and direct-answer share, as the RL pipelines measure them."""
    settings = SamplerSettings(
        prompts_per_iteration=1, samples_per_prompt=1, temperature=config.solution_temperature,
        top_p=1.0, max_new_tokens=config.solution_max_new_tokens, seed=seed, reward=config.answer_reward,
        dynamic_sampling=False, max_sampling_rounds=1, async_rollouts=False, checkpoint_every=0,
        num_iterations=1, eval_samples=config.eval_samples,
    )  # fmt: skip
    held_out = Prompts.tokenize(engine.tokenizer, rows, _NO_PROMPT_CAP)
    return held_out_accuracy(engine, held_out, settings, reward_fn)


# ------------------------------------------------------------------------------------ the command


# SFT fields that change no iteration's result (paths, logging).
_SFT_NOT_INPUTS = ("output_dir", "logging_dir", "run_name", "disable_tqdm", "logging_steps", "report_to")


def run_inputs(config: SelfTrainConfig, task: TaskConfig, args: SFTConfig) -> dict:
    """What a run's iterations depend on (``num_iterations`` aside: a rerun may add iterations)."""
    settings = {k: v for k, v in asdict(config).items() if k != "num_iterations"}
    sft = {k: v for k, v in args.to_dict().items() if k not in _SFT_NOT_INPUTS}
    inputs = {"self_train": settings, "task": asdict(task), "sft": sft,
              "actor_model": model_fingerprint(config.actor), "critic_model": model_fingerprint(config.critic)}  # fmt: skip
    return json.loads(json.dumps(inputs, default=str))  # as read back from inputs.json


def _check_same_inputs(path: Path, inputs: dict, run_dir: Path) -> None:
    """Refuse to resume a run made from other inputs; record the inputs of a new one."""
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded is not None and recorded != inputs:
        changed = sorted(k for k in inputs if recorded.get(k) != inputs[k])
        raise OutputError(
            f"{run_dir} holds a `llmac {COMMAND}` run of other inputs (changed: {', '.join(changed)}): pass "
            "--overwrite to start over, or choose another output_dir"
        )
    write_text_atomically(path, json.dumps(inputs, indent=1) + "\n")


def _finished_iteration(folder: Path) -> dict | None:
    """The record of an iteration whose actor was saved and whose metrics were written, else None."""
    try:
        record = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return record if is_complete_model(folder / "actor") else None


def run_self_training(
    config: SelfTrainConfig,
    task: TaskConfig,
    engine_config: EngineConfig,
    args: SFTConfig,
    overwrite: bool = False,
    actor_engine: RolloutEngine | None = None,
    critic_engine: RolloutEngine | None = None,
) -> list[dict]:
    """Run the iterations (module docstring) in ``args.output_dir``; one record per evaluation.

    Engines handed in (tests, one process driving several runs) are used as they are and left open;
    a given actor engine must hold ``config.actor``'s weights, and ends holding the final actor's.
    """
    run_dir = Path(args.output_dir)
    sources = [config.actor, config.critic, task.train_path, task.eval_path]
    work = prepare_output(run_dir, COMMAND, overwrite, sources, resumable=lambda _: True)
    _check_same_inputs(work / "inputs.json", run_inputs(config, task, args), run_dir)
    rows, held_out = load_task(task, config.split), load_task(task, "eval")
    reward_fn = get_reward_fn(config.answer_reward)
    own_actor, own_critic = actor_engine is None, critic_engine is None
    actor_engine = actor_engine or build_engine(config.actor, engine_config)
    try:
        critic_engine = critic_engine or build_engine(config.critic, engine_config)
        start = held_out_figures(actor_engine, held_out, config, reward_fn, args.seed)
        records = [{"iteration": 0, "actor": str(config.actor), **start}]
        logger.info("self-training: starting actor %s", _figures_line(records[0]))
        actor, in_engine, kept_dirs = Path(config.actor), Path(config.actor), []
        for iteration in range(1, config.num_iterations + 1):
            folder = work / f"iteration-{iteration}"
            kept_dirs.append(folder / "kept")
            record = _finished_iteration(folder)
            if record is None:
                if in_engine != actor:
                    load_actor_weights(actor_engine, actor)
                record = self_train_iteration(
                    iteration, actor, actor_engine, critic_engine, rows, held_out, config, args, reward_fn, folder,
                    kept_dirs,
                )  # fmt: skip
                in_engine = folder / "actor"
                write_text_atomically(folder / "metrics.json", json.dumps(record, indent=2) + "\n")
            else:
                logger.info("self-training: iteration %d found finished in %s: reused", iteration, folder)
            actor = folder / "actor"
            records.append(record)
            logger.info("self-training: iteration %d: %s", iteration, _figures_line(record))
        if in_engine != actor:  # the last iterations were reused: the engine ends with the final actor
            load_actor_weights(actor_engine, actor)
    finally:
        if own_critic and critic_engine is not None:
            critic_engine.close()
        if own_actor:
            actor_engine.close()
    lines = "".join(json.dumps(record) + "\n" for record in records)
    write_text_atomically(work / "metrics.jsonl", lines)
    finish_output(work, run_dir, COMMAND)
    return records


def self_train_iteration(
    iteration: int,
    actor: Path,
    actor_engine: RolloutEngine,
    critic_engine: RolloutEngine,
    rows: Dataset,
    held_out: Dataset,
    config: SelfTrainConfig,
    args: SFTConfig,
    reward_fn: RewardFn,
    folder: Path,
    kept_dirs: list[Path],
) -> dict:
    """One iteration from the actor in ``actor_engine``; the new actor is left in the engine and in
    ``folder/actor``. ``kept_dirs`` are the kept-solution folders of iterations 1..``iteration``."""
    problems = iteration_rows(rows, iteration, config.num_problems)
    seed = args.seed * 1_000_003 + iteration  # fresh samples every iteration, reproducible per run
    collected = collect_kept(
        actor_engine, critic_engine, problems["question"], problems["answer"], config, reward_fn, seed
    )
    save_dataset_atomically(collected.turns, folder / "turns", COMMAND, overwrite=True)
    save_dataset_atomically(collected.kept, folder / "kept", COMMAND, overwrite=True)
    if config.accumulate:
        every = concatenate_datasets([load_records(d) for d in kept_dirs])
        train_dir = save_dataset_atomically(every, folder / "train_data", COMMAND, overwrite=True)
        start = Path(config.actor)
    else:
        train_dir, start = folder / "kept", actor
    if len(load_records(train_dir)) == 0:
        raise LlmacError(
            f"{COMMAND}: iteration {iteration} kept no correct solution ({folder / 'turns'} has every turn): "
            "raise num_problems or samples_per_problem, or start from a stronger actor"
        )
    new_actor = sft_on_kept(ModelConfig(model_name_or_path=str(start)), train_dir, args, folder / "actor")
    load_actor_weights(actor_engine, new_actor)
    figures = held_out_figures(actor_engine, held_out, config, reward_fn, args.seed)
    # the actor's folder relative to the run folder (a replacing run works in a sibling until its end)
    actor_name = f"{folder.name}/{new_actor.name}"
    return {"iteration": iteration, "actor": actor_name, **collected.stats, **figures}


def _figures_line(record: dict) -> str:
    parts = [f"held-out greedy {record['eval_accuracy']:.3f}"]
    if "eval_sampled_accuracy" in record:
        parts.append(f"sampled {record['eval_sampled_accuracy']:.3f}")
    if "kept" in record:
        parts.append(
            f"kept {record['kept']} ({record['kept_original']} original, {record['kept_refined']} refined) of "
            f"{record['solutions']} solutions"
        )
    return ", ".join(parts)


# What a `llmac critique self-train` recipe fills, in order.
CONFIG_CLASSES = (SelfTrainConfig, TaskConfig, EngineConfig, SFTConfig, OutputConfig)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    config, task, engine_config, args, output = parse_config(CONFIG_CLASSES, argv, prog=f"llmac {COMMAND}")
    records = run_self_training(config, task, engine_config, args, overwrite=output.overwrite)
    end_process_group()
    run_dir = Path(args.output_dir).resolve()
    final = records[-1]
    print(
        f"llmac {COMMAND}: held-out greedy accuracy {records[0]['eval_accuracy']:.4f} -> "
        f"{final['eval_accuracy']:.4f} after {len(records) - 1} iteration(s); actor in {run_dir / final['actor']}; "
        f"metrics in {run_dir / 'metrics.jsonl'}"
    )
    return records
