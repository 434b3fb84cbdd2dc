"""``llmac dapo build``: states, candidate next steps and their Monte-Carlo values, from the reference policy.

For every question of the task's split: sample ``num_solutions`` solutions (K), keep ``keep_solutions``
of them balanced between correct and wrong, split them into steps, and MC-value every candidate
(state + step) they take with ``num_rollouts`` continuations through the engine: the critic's MC
labeller does the continuing and counting (:func:`llmac.critic.labelling.count_correct_continuations`).
A candidate that ends its solution is valued by the solution's own verified outcome, as the labeller
values a last step.

Output (``data_dir``, a ``datasets`` folder written atomically; ``llmac export`` pushes it): one row per
state with two or more candidates: ``question_index``, ``question``, ``answer``, ``state`` (clean steps
so far), ``candidates``, ``last`` (the candidate ends the solution), ``mc_values``, ``visits`` (how many
kept solutions took it). ``dapo_build.json`` beside it (and the dataset's description) counts every
completion generated, MC rollouts included, and the states skipped for having one candidate.

Each shard of ``questions_per_shard`` questions is saved as soon as it is done (``<data_dir>.partial``);
a killed build reruns to the identical dataset. Shards are tied to the questions, the configs, the
model's weights, the reward and the delimiter (:func:`llmac.rollouts.job_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
from datasets import Dataset, Features, List, Value, load_from_disk

from llmac.config import ModelConfig, parse_config
from llmac.critic.labelling import LABEL_FEATURES, MCLabelConfig, count_correct_continuations
from llmac.dapo.config import DAPOBuildConfig
from llmac.dapo.states import balanced_subset, group_by_state, solution_nodes, unique_nodes, visit_counts
from llmac.data.loading import format_prompt
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, RolloutEngine, build_engine
from llmac.errors import ConfigError
from llmac.files import write_text_atomically
from llmac.outputs import (
    check_output,
    claim_work_folder,
    remove_own_folder,
    staged_folder,
)
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn, get_reward_fn
from llmac.rollouts import ShardStore, job_fingerprint, run_in_shards
from llmac.steps import clean_steps, join_steps

logger = logging.getLogger(__name__)

COMMAND = "dapo build"
STATS_FILE = "dapo_build.json"
# Seeds of the MC continuations start far from those of the solutions (seed + question * K + k).
_MC_SEED_STRIDE = 1_000_000_007

QUESTION_FEATURES = Features(
    {
        "question_index": Value("int64"),
        "question": Value("string"),
        "answer": Value("string"),
        "solutions": List(List(Value("string"))),  # kept solutions, clean steps
        "solution_rewards": List(Value("float64")),
        "node_states": List(List(Value("string"))),
        "node_steps": List(Value("string")),
        "node_last": List(Value("bool")),
        "node_values": List(Value("float64")),  # NaN: not valued (value_all_steps off)
        "node_visits": List(Value("int64")),
        "sampled": Value("int64"),  # solutions generated
        "mc_rollouts": Value("int64"),  # continuations generated
    }
)
STATE_FEATURES = Features(
    {
        "question_index": Value("int64"),
        "question": Value("string"),
        "answer": Value("string"),
        "state": List(Value("string")),
        "candidates": List(Value("string")),
        "last": List(Value("bool")),
        "mc_values": List(Value("float64")),
        "visits": List(Value("int64")),
    }
)


@dataclass
class _Question:
    index: int
    question: str
    answer: str
    prompt: str


def value_questions(
    engine: RolloutEngine,
    rows: Dataset,
    build: DAPOBuildConfig,
    mc: MCLabelConfig,
    reward_fn: RewardFn,
    shard_dir: str | Path | None = None,
    progress: bool = True,
) -> Dataset:
    """One row per question (:data:`QUESTION_FEATURES`): its kept solutions and every node's value."""
    questions = [
        _Question(i, q, str(a), format_prompt(engine.tokenizer, q))
        for i, (q, a) in enumerate(zip(rows["question"], rows["answer"], strict=True))
    ]
    if not questions:
        raise ValueError("no questions to build DAPO data for")
    shards = None
    if shard_dir is not None:
        digest = hashlib.sha256(json.dumps([[q.prompt, q.answer] for q in questions]).encode()).hexdigest()
        settings = {
            k: v for k, v in asdict(build).items() if k not in ("data_dir", "critic_labels_dir", "overwrite")
        }
        inputs = {"job": "dapo-build", "questions_sha256": digest, "rows": len(questions), "build": settings,
                  "mc": asdict(mc), **job_fingerprint(engine, reward_fn)}  # fmt: skip
        shards = ShardStore(shard_dir, inputs, job="DAPO build")

    def value(number: int, start: int, stop: int) -> Dataset:
        seed = mc.seed + _MC_SEED_STRIDE * (number + 1)
        return _value_shard(engine, questions[start:stop], build, mc, reward_fn, seed)

    return run_in_shards(
        len(questions), build.questions_per_shard, value, shards, "DAPO build", "question", progress
    )


def _value_shard(
    engine: RolloutEngine,
    questions: list[_Question],
    build: DAPOBuildConfig,
    mc: MCLabelConfig,
    reward_fn: RewardFn,
    mc_seed: int,
) -> Dataset:
    k, delimiter = build.num_solutions, engine.delimiter
    sampling = build.solution_sampling(mc.seed + questions[0].index * k)
    groups = engine.generate([q.prompt for q in questions], sampling)
    texts = [c.text for group in groups for c in group]
    rewards = iter(verify(reward_fn, texts, [q.answer for q in questions for _ in range(k)]))
    records: dict[str, list] = {key: [] for key in QUESTION_FEATURES}
    requests: list[tuple[int, int, str]] = []  # (question in shard, node, prefix text)
    for position, (question, group) in enumerate(zip(questions, groups, strict=True)):
        sampled = [(clean_steps(c.text, delimiter), float(next(rewards))) for c in group]
        sampled = [(steps, r) for steps, r in sampled if steps]
        kept = [sampled[i] for i in balanced_subset([r >= mc.correct_threshold for _, r in sampled],
                                                    build.keep_solutions)]  # fmt: skip
        solutions = [steps for steps, _ in kept]
        nodes = unique_nodes(solutions)
        by_state = group_by_state(nodes)
        values = [math.nan] * len(nodes)
        index = {node: i for i, node in enumerate(nodes)}
        for steps, reward in kept:  # a last step is worth its solution's outcome
            values[index[solution_nodes(steps)[-1]]] = float(reward >= mc.correct_threshold)
        for i, node in enumerate(nodes):
            if not node.last and (build.value_all_steps or len(by_state[node.state]) > 1):
                requests.append((position, i, join_steps([*node.state, node.step], delimiter) + delimiter))
        row = (question.index, question.question, question.answer, solutions, [r for _, r in kept],
               [list(n.state) for n in nodes], [n.step for n in nodes], [n.last for n in nodes], values,
               visit_counts(solutions, nodes), k, 0)  # fmt: skip
        for key, value in zip(QUESTION_FEATURES, row, strict=True):
            records[key].append(value)
    prefixes = [text for _, _, text in requests]
    counts, _ = count_correct_continuations(
        engine,
        [questions[p].prompt for p, _, _ in requests],
        prefixes,
        prefixes,
        [questions[p].answer for p, _, _ in requests],
        mc,
        reward_fn,
        mc_seed,
    )
    for (position, node, _), count in zip(requests, counts, strict=True):
        records["node_values"][position][node] = count / mc.num_rollouts
        records["mc_rollouts"][position] += mc.num_rollouts
    return Dataset.from_dict(records, features=QUESTION_FEATURES)


# -- from valued questions to the outputs (pure) ---------------------------------------------------
def states_of(valued: Dataset) -> tuple[Dataset, dict]:
    """The states with two or more candidates (:data:`STATE_FEATURES`) and the build's counts."""
    records: dict[str, list] = {key: [] for key in STATE_FEATURES}
    stats = {"questions": len(valued), "solutions_sampled": 0, "solutions_kept": 0, "states": 0,
             "states_single_candidate": 0, "candidates": 0, "mc_rollouts": 0}  # fmt: skip
    for row in valued:
        stats["solutions_sampled"] += row["sampled"]
        stats["solutions_kept"] += len(row["solutions"])
        stats["mc_rollouts"] += row["mc_rollouts"]
        states = {}
        for i, state in enumerate(row["node_states"]):
            states.setdefault(tuple(state), []).append(i)
        for state, members in states.items():
            if len(members) < 2:
                stats["states_single_candidate"] += 1
                continue
            stats["states"] += 1
            stats["candidates"] += len(members)
            values = (row["question_index"], row["question"], row["answer"], list(state),
                      [row["node_steps"][i] for i in members], [row["node_last"][i] for i in members],
                      [row["node_values"][i] for i in members], [row["node_visits"][i] for i in members])  # fmt: skip
            for key, value in zip(STATE_FEATURES, values, strict=True):
                records[key].append(value)
    stats["completions"] = stats["solutions_sampled"] + stats["mc_rollouts"]
    return Dataset.from_dict(records, features=STATE_FEATURES), stats


def critic_labels_of(valued: Dataset, delimiter: str) -> Dataset:
    """The kept solutions in the Math-Shepherd layout of ``llmac critic label`` (labels = node values)."""
    records: dict[str, list] = {key: [] for key in LABEL_FEATURES}
    for row in valued:
        index = {(tuple(s), step, last): i for i, (s, step, last) in
                 enumerate(zip(row["node_states"], row["node_steps"], row["node_last"], strict=True))}  # fmt: skip
        for steps, reward in zip(row["solutions"], row["solution_rewards"], strict=True):
            labels = [row["node_values"][index[(n.state, n.step, n.last)]] for n in solution_nodes(steps)]
            if any(math.isnan(v) for v in labels):
                raise ValueError("critic labels need a value at every step (value_all_steps)")
            values = (row["question"], steps, labels, [int(v > 0) for v in labels], row["answer"], reward,
                      row["question_index"])  # fmt: skip
            for key, value in zip(LABEL_FEATURES, values, strict=True):
                records[key].append(value)
    return Dataset.from_dict(records, features=LABEL_FEATURES)


# -- writing ---------------------------------------------------------------------------------------
def save_states(states: Dataset, stats: dict, path: str | Path, overwrite: bool = False) -> Path:
    """The states dataset and its counts (``dapo_build.json``), swapped in whole at ``path``."""
    path = Path(path)
    check_output(path, COMMAND, overwrite=overwrite)
    states.info.description = "DAPO (Direct Advantage Policy Optimization) build: " + json.dumps(stats)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with staged_folder(path, COMMAND) as staging:
            states.save_to_disk(str(staging))
            write_text_atomically(staging / STATS_FILE, json.dumps(stats, indent=2) + "\n")
    finally:
        if bars:
            datasets.enable_progress_bars()
    return path


def read_build_stats(path: str | Path) -> dict:
    """The counts ``llmac dapo build`` wrote beside its dataset."""
    return json.loads((Path(path) / STATS_FILE).read_text())


def is_built(path: str | Path) -> bool:
    return (Path(path) / STATS_FILE).is_file() and (Path(path) / "dataset_info.json").is_file()


def build_data(
    model_path: str,
    build: DAPOBuildConfig,
    mc: MCLabelConfig,
    task: TaskConfig,
    engine_config: EngineConfig,
    engine: RolloutEngine | None = None,
    progress: bool = True,
) -> dict:
    """Build ``build.data_dir`` (and ``critic_labels_dir``) from ``model_path``'s samples; the counts.

    ``engine``: a running engine holding the reference policy's weights (left running); by default one
    is started from ``model_path`` and closed.
    """
    if not build.data_dir:
        raise ConfigError("llmac dapo build: --data_dir is required (where the dataset is written)")
    output = Path(build.data_dir)
    inputs = [model_path, task.train_path, task.eval_path]
    if build.critic_labels_dir:
        check_output(build.critic_labels_dir, COMMAND, overwrite=build.overwrite, sources=inputs)
    work = claim_work_folder(output, COMMAND, build.overwrite, inputs)
    reward_fn = get_reward_fn(build.reward)
    rows = load_task(task, build.split)
    owns_engine = engine is None
    engine = engine or build_engine(model_path, engine_config)
    try:
        valued = value_questions(engine, rows, build, mc, reward_fn, work / "shards", progress)
    finally:
        if owns_engine:
            engine.close()
    states, stats = states_of(valued)
    if build.critic_labels_dir:
        from llmac.rollouts import save_dataset_atomically

        labels = critic_labels_of(valued, engine.delimiter)
        save_dataset_atomically(labels, build.critic_labels_dir, COMMAND, overwrite=build.overwrite)
    save_states(states, stats, output, overwrite=build.overwrite)
    remove_own_folder(work, COMMAND)
    logger.info("DAPO build: %s -> %s", stats, output)
    return stats


# What a `llmac dapo build` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, DAPOBuildConfig, MCLabelConfig, TaskConfig, EngineConfig)


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, build, mc, task, engine_config = parse_config(CONFIG_CLASSES, argv, prog="llmac dapo build")
    stats = build_data(model_config.model_name_or_path, build, mc, task, engine_config)
    print(f"llmac dapo build: {stats['states']} states, {stats['candidates']} candidates, "
          f"{stats['completions']} completions generated -> {Path(build.data_dir).resolve()}")  # fmt: skip
    return Path(build.data_dir)


def load_states(path: str | Path) -> Dataset:
    return load_from_disk(str(path))
