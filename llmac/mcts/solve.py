"""``llmac mcts solve``: answer questions by tree search guided by the step critic alone.

The search (:mod:`llmac.mcts.search`) runs without a verifier: every new node, terminals included,
is valued by the critic (:class:`~llmac.mcts.values.CriticValue`), and a terminal backs its value up
whenever it is selected again. The answer of a tree is the path :func:`chosen_node` picks:

- ``value``: the terminal with the highest value (then the most visits, then the first found);
- ``visits``: the end of the most visited path (:meth:`~llmac.mcts.tree.Tree.most_visited_path`).

A tree without a terminal (``value``) or whose most visited path stops short of one is finished
greedily from its chosen node (``continue_from``, temperature 0). Only then does the verifier see the
answers, to score them against the gold: this is the number to set beside best-of-N at the same
generated tokens (``generated_tokens`` per answer: step samples + the greedy finish).

Output (``output_dir``, swapped in whole): ``answers/`` (one row per question: ``question_index``,
``question``, ``answer`` (gold), ``response``, ``value`` (the chosen node's, in [0, 1]), ``visits``,
``finished`` (greedily finished), ``reward``, ``correct``, ``nodes``, ``generated_tokens``),
``trees/`` (for ``llmac mcts view``) and ``mcts_solve.json`` (accuracy and counts). Trees are searched
in resumable shards as ``llmac mcts build`` does (``<output_dir>.partial``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import datasets
from datasets import Dataset, Features, Value

from llmac.config import ModelConfig, parse_config
from llmac.data.tasks import TaskConfig
from llmac.engines import EngineConfig, RolloutEngine, SamplingConfig
from llmac.errors import ConfigError
from llmac.files import write_text_atomically
from llmac.fingerprints import engine_model_fingerprint
from llmac.mcts.build import (
    TREES,
    Critic,
    process_share,
    running_engine,
    search_in_shards,
    task_questions,
    trees_of,
)
from llmac.mcts.config import MCTSSolveConfig
from llmac.mcts.search import SearchConfig
from llmac.mcts.tree import Node, Tree, to_probability
from llmac.mcts.values import CriticValue
from llmac.outputs import check_output, claim_work_folder, remove_own_folder, staged_folder
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn, get_reward_fn

logger = logging.getLogger(__name__)

COMMAND = "mcts solve"
METRICS_FILE = "mcts_solve.json"
ANSWERS = "answers"

ANSWER_FEATURES = Features(
    {
        "question_index": Value("int64"),
        "question": Value("string"),
        "answer": Value("string"),
        "response": Value("string"),
        "value": Value("float64"),
        "visits": Value("int64"),
        "finished": Value("bool"),
        "reward": Value("float64"),
        "correct": Value("bool"),
        "nodes": Value("int64"),
        "generated_tokens": Value("int64"),
    }
)


def chosen_node(tree: Tree, answer_by: str = "value") -> Node:
    """The node whose path answers the tree's question (see the module doc); the root if nothing grew."""
    if answer_by == "value":
        terminals = [n for n in tree.nodes() if n.terminal and n.visits]
        if terminals:
            # max keeps the first of equals: dfs order breaks the remaining ties
            return max(terminals, key=lambda n: (n.q, n.visits))
    elif answer_by != "visits":
        raise ValueError(f"answer_by must be 'value' or 'visits', got {answer_by!r}")
    path = tree.most_visited_path()
    return path[-1] if path else tree.root


def node_value(tree: Tree, node: Node) -> float:
    """A node's backed-up value on [0, 1]."""
    return min(1.0, max(0.0, to_probability(node.q, tree.scale)))


def finish_greedily(
    engine: RolloutEngine, leaves: Sequence[tuple[Tree, Node]], max_new_tokens: int
) -> list[tuple[str, int]]:
    """Each non-terminal node's path finished by greedy decoding: (added text, its tokens)."""
    if not leaves:
        return []
    sampling = SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    groups = engine.continue_from(
        [t.prompt for t, _ in leaves], [n.prefix_ids() for _, n in leaves], sampling
    )
    return [(group[0].text, len(group[0].token_ids)) for group in groups]


def answer_rows(
    engine: RolloutEngine,
    trees: Sequence[Tree],
    question_indices: Sequence[int],
    answer_by: str,
    finish_max_new_tokens: int,
    reward_fn: RewardFn,
    correct_threshold: float,
) -> Dataset:
    """One answer per tree (:data:`ANSWER_FEATURES`), scored by ``reward_fn`` against the gold."""
    chosen = [chosen_node(tree, answer_by) for tree in trees]
    unfinished = [i for i, node in enumerate(chosen) if not node.terminal]
    finishes = dict(zip(unfinished, finish_greedily(engine, [(trees[i], chosen[i]) for i in unfinished],
                                                    finish_max_new_tokens), strict=True))  # fmt: skip
    responses = [node.prefix_text() + finishes.get(i, ("", 0))[0] for i, node in enumerate(chosen)]
    rewards = verify(reward_fn, responses, [tree.answer for tree in trees])
    records = []
    for i, (tree, node) in enumerate(zip(trees, chosen, strict=True)):
        records.append(
            {
                "question_index": question_indices[i],
                "question": tree.question,
                "answer": tree.answer,
                "response": responses[i],
                "value": node_value(tree, node),
                "visits": node.visits,
                "finished": i in finishes,
                "reward": float(rewards[i]),
                "correct": bool(rewards[i] >= correct_threshold),
                "nodes": sum(1 for _ in tree.nodes()),
                "generated_tokens": tree.generated_tokens + finishes.get(i, ("", 0))[1],
            }
        )
    return Dataset.from_list(records, features=ANSWER_FEATURES)


def solve_metrics(answers: Dataset, answer_by: str) -> dict:
    """Accuracy and what it cost."""
    n = len(answers)
    return {
        "questions": n,
        "accuracy": sum(answers["correct"]) / n if n else 0.0,
        "answer_by": answer_by,
        "finished_greedily": sum(answers["finished"]),
        "nodes": sum(answers["nodes"]),
        "generated_tokens": sum(answers["generated_tokens"]),
        "tokens_per_question": sum(answers["generated_tokens"]) / n if n else 0.0,
    }


def solve_questions(
    engine: RolloutEngine,
    questions: Dataset,
    search: SearchConfig,
    solve: MCTSSolveConfig,
    critic: Critic,
    reward_fn: RewardFn,
    shard_dir: str | Path | None = None,
    gather: bool = True,
) -> tuple[Dataset, Dataset] | None:
    """The answers (:data:`ANSWER_FEATURES`) and the tree rows; ``reward_fn`` only scores the answers."""

    def evaluator(number: int, seed: int) -> CriticValue:
        return CriticValue(critic.model, critic.tokenizer, critic.delimiter, solve.critic_batch_size)

    inputs = {"critic": engine_model_fingerprint(critic), "critic_batch_size": solve.critic_batch_size}
    rows = search_in_shards(engine, questions, search, evaluator, None, solve.questions_per_shard, shard_dir,
                            inputs, solve.progress, gather, desc="MCTS solve")  # fmt: skip
    if rows is None:
        return None
    answers = answer_rows(engine, trees_of(rows), rows["question_index"], solve.answer_by,
                          solve.finish_max_new_tokens, reward_fn, search.correct_threshold)  # fmt: skip
    return answers, rows


def save_solve(
    answers: Dataset, rows: Dataset, metrics: dict, path: str | Path, overwrite: bool = False
) -> Path:
    """``answers/``, ``trees/`` and ``mcts_solve.json``, swapped in whole at ``path``."""
    path = Path(path)
    check_output(path, COMMAND, overwrite=overwrite)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        with staged_folder(path, COMMAND) as staging:
            answers.save_to_disk(str(staging / ANSWERS))
            rows.save_to_disk(str(staging / TREES))
            write_text_atomically(staging / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    finally:
        if bars:
            datasets.enable_progress_bars()
    return path


def run_solve(
    model_path: str,
    solve: MCTSSolveConfig,
    search: SearchConfig,
    task: TaskConfig,
    engine_config: EngineConfig,
    engine: RolloutEngine | None = None,
) -> dict | None:
    """Answer ``solve.split``'s questions into ``solve.output_dir``; the metrics (None off rank 0)."""
    if not solve.output_dir or not solve.critic:
        raise ConfigError(f"llmac {COMMAND}: --output_dir and --critic are required")
    output = Path(solve.output_dir)
    rank, _ = process_share()
    sources = [model_path, solve.critic, task.train_path, task.eval_path]
    work = claim_work_folder(output, COMMAND, solve.overwrite, sources)
    reward_fn = get_reward_fn(solve.reward)
    questions = task_questions(task, solve.split, solve.num_questions)
    critic = Critic.load(solve.critic)
    with running_engine(model_path, engine_config, engine) as engine:
        solved = solve_questions(engine, questions, search, solve, critic, reward_fn, work / "shards",
                                 gather=rank == 0)  # fmt: skip
    if solved is None:
        return None
    answers, rows = solved
    metrics = solve_metrics(answers, solve.answer_by)
    save_solve(answers, rows, metrics, output, overwrite=solve.overwrite)
    remove_own_folder(work, COMMAND)
    logger.info("MCTS solve: %s -> %s", metrics, output)
    return metrics


# What a `llmac mcts solve` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, MCTSSolveConfig, SearchConfig, TaskConfig, EngineConfig)


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, solve, search, task, engine_config = parse_config(
        CONFIG_CLASSES, argv, prog="llmac mcts solve"
    )
    metrics = run_solve(model_config.model_name_or_path, solve, search, task, engine_config)
    if metrics is not None:
        print(f"llmac mcts solve: accuracy {metrics['accuracy']:.3f} on {metrics['questions']} questions, "
              f"{metrics['tokens_per_question']:.0f} tokens per question -> {Path(solve.output_dir).resolve()}")  # fmt: skip
    return Path(solve.output_dir)
