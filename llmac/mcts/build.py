"""``llmac mcts build``: search trees on a task's questions, and the datasets they yield.

Every question of the split (or the first ``num_questions``) gets one tree (:mod:`llmac.mcts.search`):
``questions_per_shard`` trees advance together, so each iteration is one engine batch, and each
shard of trees is saved as soon as it is searched (``<output_dir>.partial/shards``). A killed build
reruns to the identical output. Shards are tied to everything that changes their rows: the questions
(and their chat-templated prompts), the search and leaf settings, the seed, the model's and the
critic's weights, the reward function and the delimiter; a rerun with any of them changed is refused.

Seeds. Shard ``s`` searches with step seed ``seed + s * SHARD_SEED_STRIDE`` and rollout seed that plus
``SHARD_SEED_STRIDE // 2``, whatever ran before it, so a shard computed after a resume is the shard an
uninterrupted run computes (with HFEngine too, whose samples depend on the call).

Processes. Under ``accelerate launch`` (or ``torchrun``) process ``RANK`` of ``WORLD_SIZE`` searches
shards ``RANK, RANK + WORLD_SIZE, ...`` with its own engine (on GPU, its own device), and rank 0
waits for the others' shards and writes the output. The output does not depend on the process count.

Output (``output_dir``, swapped in whole): ``trees/``, one row per tree (:data:`TREE_FEATURES`, loaded
back with :func:`load_trees`); one folder per export asked for (``--exports``, columns in
:mod:`llmac.mcts.exports` and :mod:`llmac.mcts.trajectories`); ``mcts_build.json``, the counts (trees,
nodes, coverage, generated tokens, rows per export). Each folder is a ``datasets`` folder that
``llmac export --source <output_dir>/<name>`` makes Hub-ready.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import datasets
from datasets import Dataset, Features, List, Value, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from llmac.config import ModelConfig, parse_config
from llmac.critic.labelling import MCLabelConfig
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, RolloutEngine, build_engine
from llmac.errors import ConfigError, InputNotFoundError
from llmac.files import write_text_atomically
from llmac.fingerprints import engine_model_fingerprint, reward_fingerprint
from llmac.mcts.config import MCTSBuildConfig
from llmac.mcts.exports import (
    rstar_pair_rows,
    step_preference_rows,
    value_label_rows,
    verified_solution_rows,
)
from llmac.mcts.search import Search, SearchConfig, new_trees
from llmac.mcts.trajectories import critique_pair_rows, revision_rows
from llmac.mcts.tree import Tree, tree_from_record, tree_to_record
from llmac.mcts.values import CriticValue, LeafEvaluator, MixedValue, RolloutValue
from llmac.outputs import check_output, claim_work_folder, remove_own_folder, staged_folder
from llmac.rewards.registry import RewardFn, get_reward_fn
from llmac.rollouts import ShardStore

logger = logging.getLogger(__name__)

COMMAND = "mcts build"
STATS_FILE = "mcts_build.json"
TREES = "trees"
SHARD_SEED_STRIDE = 10_000_019
WAIT_SECONDS = 2.0

TREE_FEATURES = Features(
    {
        "question_index": Value("int64"),
        "question": Value("string"),
        "answer": Value("string"),
        "prompt": Value("string"),
        "scale": Value("string"),
        "max_depth": Value("int64"),
        "max_children": Value("int64"),
        "step_samples": Value("int64"),
        "step_tokens": Value("int64"),
        "rollout_tokens": Value("int64"),
        "node_parent": List(Value("int64")),  # -1 for the root (node 0)
        "node_text": List(Value("string")),
        "node_token_ids": List(List(Value("int64"))),
        "node_prior": List(Value("float64")),
        "node_visits": List(Value("int64")),
        "node_value_sum": List(Value("float64")),
        "node_terminal": List(Value("bool")),
        "node_reward": List(Value("float64")),  # None: not a verified terminal
        "node_correct": List(Value("bool")),
        "node_evaluation": List(Value("float64")),  # a terminal's evaluator value (no verifier)
    }
)


# -- leaf values -----------------------------------------------------------------------------------
@dataclass
class Critic:
    """A loaded step critic; ``model_path`` (or the weights) fingerprints it for the shards."""

    model: object
    tokenizer: object
    delimiter: str
    model_path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> Critic:
        from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
        from llmac.paths import check_model_path

        check_model_path(str(path), "critic folder", flag="critic")
        model = load_critic(path)
        return cls(model, load_critic_tokenizer(path), critic_delimiter(model), Path(path))


def rollout_config(build: MCTSBuildConfig, seed: int) -> MCLabelConfig:
    """The leaf rollouts' settings as the MC labeller takes them, first rollout seeded ``seed``."""
    return MCLabelConfig(
        num_rollouts=build.num_rollouts,
        temperature=build.rollout_temperature,
        max_new_tokens=build.rollout_max_new_tokens,
        seed=seed,
    )


def leaf_evaluator(
    engine: RolloutEngine,
    build: MCTSBuildConfig,
    reward_fn: RewardFn | None,
    critic: Critic | None,
    seed: int,
) -> LeafEvaluator:
    """The evaluator ``build.leaf_value`` names; rollouts seeded from ``seed``."""
    if build.leaf_value != "rollouts" and critic is None:
        raise ConfigError(f"llmac {COMMAND}: leaf_value={build.leaf_value} needs --critic")
    if build.leaf_value != "rollouts":
        by_critic = CriticValue(critic.model, critic.tokenizer, critic.delimiter, build.critic_batch_size)
        if build.leaf_value == "critic":
            return by_critic
    if reward_fn is None:
        raise ValueError("rollout leaf values need a reward function")
    by_rollouts = RolloutValue(engine, reward_fn, rollout_config(build, seed))
    if build.leaf_value == "rollouts":
        return by_rollouts
    return MixedValue(by_critic, by_rollouts, build.critic_weight)


def shard_seeds(seed: int, number: int) -> tuple[int, int]:
    """The step-sample and rollout seeds of shard ``number``."""
    base = seed + number * SHARD_SEED_STRIDE
    return base, base + SHARD_SEED_STRIDE // 2


# -- searching in shards ---------------------------------------------------------------------------
def process_share() -> tuple[int, int]:
    """This process's rank and the process count (``RANK``/``WORLD_SIZE``; 0 and 1 when alone)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def questions_fingerprint(prompts: Sequence[str], answers: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([list(prompts), list(answers)]).encode()).hexdigest()


def search_in_shards(
    engine: RolloutEngine,
    questions: Dataset,
    search: SearchConfig,
    make_evaluator: Callable[[int, int], LeafEvaluator],
    reward_fn: RewardFn | None,
    questions_per_shard: int,
    shard_dir: str | Path | None = None,
    inputs: dict | None = None,
    progress: bool = True,
    gather: bool = True,
    desc: str = "MCTS",
) -> Dataset | None:
    """Tree rows (:data:`TREE_FEATURES`) of every question, searched shard by shard.

    ``make_evaluator(number, seed)`` gives shard ``number`` a fresh leaf evaluator whose rollouts start
    at ``seed``. ``inputs`` (JSON-able) is what else the shards depend on (see :class:`ShardStore`).
    This process searches its share of shards (:func:`process_share`); with ``gather`` it then waits
    for the others' shards and returns every row, else it returns None.
    """
    if len(questions) == 0:
        raise ValueError("no questions to search")
    texts, answers = list(questions["question"]), [str(a) for a in questions["answer"]]
    trees = new_trees(engine, texts, answers, search)
    rank, world = process_share()
    shards = None
    if shard_dir is not None:
        key = {"job": desc, "questions_sha256": questions_fingerprint([t.prompt for t in trees], answers),
               "rows": len(trees), "search": asdict(search), "questions_per_shard": questions_per_shard,
               "model": engine_model_fingerprint(engine), "delimiter": engine.delimiter,
               "reward": reward_fingerprint(reward_fn) if reward_fn is not None else None,
               **(inputs or {})}  # fmt: skip
        if key["model"] is None:
            logger.warning("the engine's weights cannot be fingerprinted: shards are not tied to the model")
        shards = open_shard_store(Path(shard_dir), key, rank)
    starts = list(range(0, len(trees), questions_per_shard))
    mine = [number for number in range(len(starts)) if number % world == rank]
    bar = tqdm(total=sum(min(questions_per_shard, len(trees) - starts[n]) for n in mine), desc=desc,
               unit="tree", disable=not progress)  # fmt: skip
    searched_nodes, searching = 0, 0.0
    done: dict[int, Dataset] = {}
    for number in mine:
        start = starts[number]
        stop = min(start + questions_per_shard, len(trees))
        shard = shards.load(number) if shards is not None else None
        if shard is None:
            began = time.perf_counter()
            step_seed, rollout_seed = shard_seeds(search.seed, number)
            shard_trees = trees[start:stop]
            Search(engine, shard_trees, replace(search, seed=step_seed), make_evaluator(number, rollout_seed),
                   reward_fn).run()  # fmt: skip
            shard = tree_rows(shard_trees, range(start, stop))
            if shards is not None:
                shards.save(number, shard)
            searching += time.perf_counter() - began
            searched_nodes += sum(len(p) - 1 for p in shard["node_parent"])
        done[number] = shard
        bar.update(stop - start)
        if searching:
            bar.set_postfix({"nodes/s": f"{searched_nodes / searching:.1f}"})
    bar.close()
    if not gather:
        return None
    for number in range(len(starts)):
        if number not in done:
            done[number] = wait_for_shard(shards, number, world)
    return concatenate_datasets([done[number] for number in range(len(starts))])


def open_shard_store(directory: Path, inputs: dict, rank: int) -> ShardStore:
    """Rank 0 creates the store; the others wait for its inputs record, then open it (and check it)."""
    if rank != 0:
        waited = 0.0
        while not (directory / ShardStore.STAMP).is_file():
            time.sleep(WAIT_SECONDS)
            waited += WAIT_SECONDS
            if waited % 60 < WAIT_SECONDS:
                logger.info("rank %d: waiting for rank 0 to create %s", rank, directory)
    return ShardStore(directory, inputs, job="MCTS")


def wait_for_shard(shards: ShardStore | None, number: int, world: int) -> Dataset:
    """Shard ``number`` once the process searching it has saved it."""
    if shards is None:
        raise ValueError("searching on several processes needs a shard_dir to gather the trees")
    waited = 0.0
    while (shard := shards.load(number)) is None:
        time.sleep(WAIT_SECONDS)
        waited += WAIT_SECONDS
        if waited % 60 < WAIT_SECONDS:
            logger.info("waiting for shard %d (process %d)", number, number % world)
    return shard


def tree_rows(trees: Sequence[Tree], question_indices: Sequence[int]) -> Dataset:
    """The trees as rows of :data:`TREE_FEATURES`."""
    records = [
        {"question_index": index, **tree_to_record(tree)}
        for index, tree in zip(question_indices, trees, strict=True)
    ]
    return Dataset.from_list(records, features=TREE_FEATURES)


def trees_of(rows: Dataset) -> list[Tree]:
    """The trees of tree rows, in row order."""
    return [tree_from_record(row) for row in rows]


def load_trees(path: str | Path) -> list[Tree]:
    """The trees of a ``llmac mcts build`` output folder, or of its ``trees/`` dataset."""
    path = Path(path)
    folder = path / TREES if (path / TREES).is_dir() else path
    if not (folder / "dataset_info.json").is_file():
        raise InputNotFoundError(
            f"{path}: no trees here; give a `llmac mcts build` output folder or its trees/"
        )
    return trees_of(load_from_disk(str(folder)))


def build_tree_rows(
    engine: RolloutEngine,
    questions: Dataset,
    search: SearchConfig,
    build: MCTSBuildConfig,
    reward_fn: RewardFn,
    critic: Critic | None = None,
    shard_dir: str | Path | None = None,
    progress: bool = True,
    gather: bool = True,
) -> Dataset | None:
    """One searched tree per row of ``questions`` (``question``, ``answer``), as :data:`TREE_FEATURES` rows."""
    settings = {k: getattr(build, k) for k in ("leaf_value", "critic_weight", "num_rollouts",
                                               "rollout_temperature", "rollout_max_new_tokens", "critic_batch_size")}  # fmt: skip
    inputs = {"leaf": settings, "critic": engine_model_fingerprint(critic) if critic is not None else None}

    def evaluator(number: int, seed: int) -> LeafEvaluator:
        return leaf_evaluator(engine, build, reward_fn, critic, seed)

    return search_in_shards(engine, questions, search, evaluator, reward_fn, build.questions_per_shard,
                            shard_dir, inputs, progress, gather, desc="MCTS build")  # fmt: skip


def build_trees(
    engine: RolloutEngine,
    questions: Dataset,
    search: SearchConfig,
    build: MCTSBuildConfig,
    reward_fn: RewardFn,
    critic: Critic | None = None,
    shard_dir: str | Path | None = None,
    progress: bool = True,
) -> list[Tree]:
    """:func:`build_tree_rows` as trees (one per question, in order); the exports take them."""
    rows = build_tree_rows(engine, questions, search, build, reward_fn, critic, shard_dir, progress)
    return trees_of(rows)


# -- exports and counts (pure) ---------------------------------------------------------------------
EXPORTS: dict[str, Callable[[Sequence[Tree], MCTSBuildConfig, str], Dataset]] = {
    "value_labels": lambda trees, b, d: value_label_rows(trees, b.min_visits, d),
    "preference_pairs": lambda trees, b, d: step_preference_rows(trees, b.min_visits, b.preference_margin, d),
    "rstar_pairs": lambda trees, b, d: rstar_pair_rows(trees, b.rstar_k, b.min_visits, d),
    "verified_solutions": lambda trees, b, d: verified_solution_rows(trees),
    "revision_trajectories": lambda trees, b, d: revision_rows(
        trees, alpha=b.revision_alpha, beta=b.revision_beta, delimiter=d
    ),
    "critique_pairs": lambda trees, b, d: critique_pair_rows(trees, delimiter=d),
}


def export_datasets(trees: Sequence[Tree], build: MCTSBuildConfig, delimiter: str) -> dict[str, Dataset]:
    """The datasets ``build.exports`` names, from finished trees."""
    return {name: EXPORTS[name](trees, build, delimiter) for name in build.export_list()}


def tree_counts(trees: Sequence[Tree]) -> dict:
    """What the trees hold and cost: nodes, terminals, coverage (a verified correct terminal), tokens."""
    nodes = [n for tree in trees for n in tree.nodes()]
    covered = sum(tree.root.has_correct_terminal() for tree in trees)
    return {
        "trees": len(trees),
        "nodes": len(nodes),
        "terminals": sum(n.terminal for n in nodes),
        "correct_terminals": sum(bool(n.terminal and n.correct) for n in nodes),
        "trees_with_correct": covered,
        "coverage": covered / len(trees) if trees else 0.0,
        "max_depth": max((n.depth for n in nodes), default=0),
        "step_samples": sum(t.step_samples for t in trees),
        "step_tokens": sum(t.step_tokens for t in trees),
        "rollout_tokens": sum(t.rollout_tokens for t in trees),
        "generated_tokens": sum(t.generated_tokens for t in trees),
    }


# -- writing ---------------------------------------------------------------------------------------
def save_build(
    rows: Dataset, exports: dict[str, Dataset], stats: dict, path: str | Path, overwrite: bool = False
) -> Path:
    """``trees/``, one folder per export and ``mcts_build.json``, swapped in whole at ``path``."""
    path = Path(path)
    check_output(path, COMMAND, overwrite=overwrite)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with staged_folder(path, COMMAND) as staging:
            for name, dataset in {TREES: rows, **exports}.items():
                dataset.info.description = f"llmac {COMMAND}: {name} " + json.dumps(stats)
                # an empty dataset saved with datasets' default 0 shards does not load back
                dataset.save_to_disk(str(staging / name), num_shards=1 if len(dataset) == 0 else None)
            write_text_atomically(staging / STATS_FILE, json.dumps(stats, indent=2) + "\n")
    finally:
        if bars:
            datasets.enable_progress_bars()
    return path


def read_build_stats(path: str | Path) -> dict:
    """The counts ``llmac mcts build`` wrote beside its datasets."""
    return json.loads((Path(path) / STATS_FILE).read_text())


def use_own_device() -> None:
    """Under several processes on GPUs, let this process's engine see only device ``LOCAL_RANK``."""
    rank, world = process_share()
    local = os.environ.get("LOCAL_RANK")
    if world > 1 and local is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        import torch

        if torch.cuda.is_available():  # counts devices without initialising CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = local


def task_questions(task: TaskConfig, split: str, limit: int) -> Dataset:
    """The ``question`` and ``answer`` columns of the task's ``split``, its first ``limit`` rows (0: all)."""
    questions = load_task(task, split).select_columns(["question", "answer"])
    return questions.select(range(min(limit, len(questions)))) if limit else questions


@contextmanager
def running_engine(model_path: str, engine_config: EngineConfig, engine: RolloutEngine | None = None):
    """``engine`` if given (left running), else one started from ``model_path`` on this process's device
    and closed at the end."""
    if engine is not None:
        yield engine
        return
    use_own_device()
    with build_engine(model_path, engine_config) as own:
        yield own


def run_build(
    model_path: str,
    build: MCTSBuildConfig,
    search: SearchConfig,
    task: TaskConfig,
    engine_config: EngineConfig,
    engine: RolloutEngine | None = None,
) -> dict | None:
    """Build ``build.output_dir`` from ``model_path``'s search trees; the counts (None off rank 0).

    ``engine``: a running engine holding the actor's weights (left running); by default one is started
    from ``model_path`` and closed.
    """
    if not build.output_dir:
        raise ConfigError(f"llmac {COMMAND}: --output_dir is required (where the trees are written)")
    output = Path(build.output_dir)
    rank, _ = process_share()
    work = claim_work_folder(output, COMMAND, build.overwrite, [model_path, build.critic, task.train_path,
                                                                task.eval_path])  # fmt: skip
    reward_fn = get_reward_fn(build.reward)
    questions = task_questions(task, build.split, build.num_questions)
    critic = Critic.load(build.critic) if build.critic and build.leaf_value != "rollouts" else None
    with running_engine(model_path, engine_config, engine) as engine:
        rows = build_tree_rows(engine, questions, search, build, reward_fn, critic, work / "shards",
                               build.progress, gather=rank == 0)  # fmt: skip
    if rows is None:
        return None
    trees = trees_of(rows)
    exports = export_datasets(trees, build, engine.delimiter)
    stats = {**tree_counts(trees), "exports": {name: len(data) for name, data in exports.items()}}
    save_build(rows, exports, stats, output, overwrite=build.overwrite)
    remove_own_folder(work, COMMAND)
    logger.info("MCTS build: %s -> %s", stats, output)
    return stats


# What a `llmac mcts build` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, MCTSBuildConfig, SearchConfig, TaskConfig, EngineConfig)


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, build, search, task, engine_config = parse_config(
        CONFIG_CLASSES, argv, prog="llmac mcts build"
    )
    stats = run_build(model_config.model_name_or_path, build, search, task, engine_config)
    if stats is not None:
        print(f"llmac mcts build: {stats['trees']} trees, {stats['nodes']} nodes, "
              f"{stats['trees_with_correct']} with a verified solution, {stats['generated_tokens']} tokens "
              f"generated -> {Path(build.output_dir).resolve()}")  # fmt: skip
    return Path(build.output_dir)
