"""Expert iteration (ReST-MCTS*, rStar-Math's rounds): search, keep the verified solutions, SFT, repeat.

One round: trees are built over the task's RL problems (``load_task(task, "rl")``, fresh problems with
final answers only) with the verifier at the leaves: terminals are verified and the other new nodes
are valued by rollouts checked by the verifier (or by a step critic, or a mix). The distinct verified
correct solutions of the round become SFT data (:func:`sft_rows`, at most ``max_solutions_per_question``
per problem): the trees' correct terminals (:func:`llmac.mcts.exports.verified_solution_rows`) and, with
``keep_rollout_solutions``, the leaf rollouts the verifier accepted. ``llmac sft``'s own training function
(:func:`llmac.sft.run_sft`, TRL's SFTTrainer, prompt-completion loss) fine-tunes the current actor on
it, and the engine takes the new weights before the next round searches.

Completions: the unit of every RL arm's budget in ``bench/pipelines.py``. A *completion* is one
sequence the rollout engine generates: one candidate step of an expansion (``sample_step``, ``n =
branching`` per expanded node) or one rollout (``continue_from``, ``num_rollouts`` per valued node).
They are counted at the engine (:class:`CountingEngine`), so nothing generated escapes the count.
A step is shorter than a whole solution, so this charges the search at least as much per token as
the sampling arms are charged (each of their completions is a whole solution); ``generated_tokens``
is recorded beside it for an equal-tokens comparison. With ``completion_budget`` a round stops before
a search iteration whose worst case (every expanded node gets ``branching`` steps and
``min(branching, max_children)`` children, each valued by ``num_rollouts`` rollouts) would go over, so a
round never spends more than its budget.

Layout of ``output_dir``: ``round-<r>/solutions`` (the SFT data: ``question``, ``answer``,
``solution``, ``value``, ``visits``, ``tree_index``, ``source``), ``round-<r>/actor`` (the SFT'd actor) and
``rounds.jsonl`` (one line of counts per round).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from datasets import Dataset

from llmac.config import ModelConfig, option, parse_config
from llmac.critic.labelling import MCLabelConfig
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, build_engine
from llmac.engines.base import Completion, RolloutEngine, SamplingConfig, Weights
from llmac.errors import ConfigError
from llmac.files import write_text_atomically
from llmac.mcts.exports import SOLUTION_FEATURES, verified_solution_rows
from llmac.mcts.search import Search, SearchConfig, SearchStats, new_trees
from llmac.mcts.tree import Node, Tree
from llmac.mcts.values import CriticValue, LeafEvaluator, MixedValue, RolloutValue
from llmac.outputs import check_output, claim_output, overwrite_field, write_marker
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn, get_reward_fn
from llmac.rollouts import save_dataset_atomically
from llmac.validation import check_fields, require

logger = logging.getLogger(__name__)

LEAF_EVALUATORS = ("rollouts", "critic", "mixed")
COMMAND = "mcts iterate"


@dataclass
class ExpertIterationConfig:
    """Rounds of search on the RL problems, SFT on the verified solutions (search settings: SearchConfig)."""

    output_dir: str = option("", "Where each round's solutions and SFT'd actor go.")
    rounds: int = option(2, "Search-then-SFT rounds.", range="[1, inf)")
    completion_budget: int = option(
        0,
        "Completions (sampled steps + rollouts) a round may generate; it takes fresh RL problems, "
        "trees_per_batch at a time, until the next iteration could go over. 0: no budget, "
        "questions_per_round problems searched for the full iterations.",
        range="[0, inf)",
    )
    questions_per_round: int = option(
        256, "Without a budget: RL problems searched per round.", range="[1, inf)"
    )
    trees_per_batch: int = option(64, "Trees advancing together (one engine batch each).", range="[1, inf)")
    leaf: str = option(
        "rollouts",
        "Value of a new non-terminal node: 'rollouts' (share verified correct), 'critic' (step critic) "
        "or 'mixed' (critic_weight * critic + the rest rollouts).",
        choices=LEAF_EVALUATORS,
    )
    critic: str | None = option(None, "leaf 'critic' or 'mixed': the step critic folder.")
    critic_weight: float = option(0.5, "leaf 'mixed': the critic's weight.", range="[0, 1]")
    num_rollouts: int = option(2, "Rollouts per valued node (leaf 'rollouts'/'mixed').", range="[1, inf)")
    rollout_max_new_tokens: int = option(256, "Tokens per rollout at most.", range="[1, inf)")
    keep_rollout_solutions: bool = option(
        True,
        "Leaf rollouts the verifier accepts are SFT data too (the node's prefix + the rollout): whole "
        "solutions the search paid for, found before a tree reaches their terminal.",
    )
    max_solutions_per_question: int = option(
        4, "SFT rows kept per problem (highest value, then most visited).", range="[1, inf)"
    )
    reward: str = option("math", "Reward function of the verifier: registered name or 'module:fn'.")
    sft_learning_rate: float = option(1e-4, "SFT learning rate of each round.", range="(0, inf)")
    sft_epochs: float = option(2.0, "SFT epochs over each round's solutions.", range="(0, inf)")
    sft_batch_size: int = option(32, "SFT rows per optimizer step.", range="[1, inf)")
    sft_lr_scheduler_type: str = option("cosine", "SFT learning-rate schedule (transformers' names).")
    sft_warmup_steps: int = option(0, "SFT warm-up optimizer steps.", range="[0, inf)")
    sft_max_length: int = option(512, "SFT: prompt + solution tokens at most.", range="[2, inf)")
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, self.leaf == "rollouts" or bool(self.critic), f"leaf={self.leaf!r} needs --critic")


# -- counting -------------------------------------------------------------------------------------


@dataclass
class GenerationCount:
    """What an engine generated: sequences (completions) and tokens, by kind of call."""

    step_completions: int = 0  # sample_step outputs
    rollout_completions: int = 0  # continue_from outputs
    solution_completions: int = 0  # generate outputs
    generated_tokens: int = 0

    @property
    def completions(self) -> int:
        return self.step_completions + self.rollout_completions + self.solution_completions

    def add(self, kind: str, groups: Sequence[Sequence[Completion]]) -> None:
        setattr(self, f"{kind}_completions", getattr(self, f"{kind}_completions") + sum(map(len, groups)))
        self.generated_tokens += sum(len(c.token_ids) for group in groups for c in group)

    def since(self, earlier: GenerationCount) -> GenerationCount:
        return GenerationCount(**{k: v - getattr(earlier, k) for k, v in asdict(self).items()})

    def copy(self) -> GenerationCount:
        return GenerationCount(**asdict(self))


class CountingEngine:
    """A rollout engine that counts every sequence and token it returns (the budget's one source)."""

    def __init__(self, engine: RolloutEngine) -> None:
        self.engine = engine
        self.count = GenerationCount()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def delimiter(self) -> str:
        return self.engine.delimiter

    def generate(self, prompts, sampling: SamplingConfig) -> list[list[Completion]]:
        groups = self.engine.generate(prompts, sampling)
        self.count.add("solution", groups)
        return groups

    def sample_step(self, prompts, prefixes, sampling: SamplingConfig) -> list[list[Completion]]:
        groups = self.engine.sample_step(prompts, prefixes, sampling)
        self.count.add("step", groups)
        return groups

    def continue_from(self, prompts, prefixes, sampling: SamplingConfig) -> list[list[Completion]]:
        groups = self.engine.continue_from(prompts, prefixes, sampling)
        self.count.add("rollout", groups)
        return groups

    def load_weights(self, state_dict: Weights) -> None:
        self.engine.load_weights(state_dict)

    def close(self) -> None:
        self.engine.close()


# -- building trees under a budget ----------------------------------------------------------------


def worst_case_completions(trees: Sequence[Tree], config: SearchConfig, rollouts_per_node: int) -> int:
    """The most completions the next search iteration over ``trees`` can generate.

    Each tree whose selected leaf is not terminal expands it: ``branching`` steps, then at most
    ``min(branching, max_children)`` new nodes, each valued by ``rollouts_per_node`` rollouts (0 for a critic).
    Selection is a pure function of the trees, so this reads the leaves the iteration will expand.
    """
    expanding = sum(not tree.select_leaf(config.selection, config.c).terminal for tree in trees)
    return expanding * (config.branching + min(config.branching, config.max_children) * rollouts_per_node)


@dataclass
class BuiltTrees:
    """A round's trees and what building them cost."""

    trees: list[Tree] = field(default_factory=list)
    stats: list[SearchStats] = field(default_factory=list)
    count: GenerationCount = field(default_factory=GenerationCount)
    next_question: int = 0  # the first RL problem not searched yet


def build_trees(
    engine: CountingEngine,
    questions: Sequence[str],
    answers: Sequence[str],
    config: SearchConfig,
    make_evaluator: Callable[[int], LeafEvaluator],
    reward_fn: RewardFn,
    start: int,
    trees_per_batch: int,
    rollouts_per_node: int,
    budget: int = 0,
    max_questions: int | None = None,
) -> BuiltTrees:
    """Search problems ``start, start + 1, ...`` in batches of ``trees_per_batch`` trees.

    With ``budget`` > 0 it stops before an iteration whose worst case would take the completions past
    ``budget`` (a batch cut short keeps its trees); with none, after ``max_questions`` problems, each
    searched for ``config.iterations``. ``make_evaluator(first)`` values the nodes of the batch whose
    first problem is ``first``. Batch seeds: problem ``q``'s expansions take step seeds from
    ``config.seed + q * iterations * branching`` on, so no two batches share one.
    """
    if not budget and max_questions is None:
        raise ValueError("build_trees needs a budget or max_questions")
    end = len(questions) if max_questions is None else min(len(questions), start + max_questions)
    built, before, cursor = BuiltTrees(next_question=start), engine.count.copy(), start
    while cursor < end:
        stop = min(cursor + trees_per_batch, end)
        batch_config = replace(config, seed=config.seed + cursor * config.iterations * config.branching)
        trees = new_trees(engine, questions[cursor:stop], answers[cursor:stop], batch_config)
        search = Search(engine, trees, batch_config, make_evaluator(cursor), reward_fn)
        out_of_budget = False
        for _ in range(config.iterations):
            spent = engine.count.since(before).completions
            if budget and spent + worst_case_completions(trees, batch_config, rollouts_per_node) > budget:
                out_of_budget = True
                break
            search.step()
        if search.stats.iterations:
            built.trees += trees
            built.stats.append(search.stats)
            cursor = stop
        if out_of_budget:
            break
    built.next_question = cursor
    built.count = engine.count.since(before)
    return built


# -- solutions and SFT ----------------------------------------------------------------------------


def sft_rows(
    trees: Sequence[Tree], per_question: int, rollout_solutions: Sequence[tuple[Tree, str]] = ()
) -> Dataset:
    """The distinct verified correct solutions of each tree, at most ``per_question`` (highest value, then
    most visits, then first found): its correct terminals (:func:`verified_solution_rows`), then the
    verified correct leaf rollouts ``(tree, text)`` (value 1, 0 visits). Columns: those of
    :func:`verified_solution_rows` and ``source`` (``"tree"`` or ``"rollout"``)."""
    index = {id(tree): i for i, tree in enumerate(trees)}
    records = [{**row, "source": "tree"} for row in verified_solution_rows(trees)]
    records += [
        {"question": tree.question, "answer": tree.answer, "solution": text.strip(), "value": 1.0, "visits": 0,
         "tree_index": index[id(tree)], "source": "rollout"}
        for tree, text in rollout_solutions
    ]  # fmt: skip
    ranked = sorted(range(len(records)), key=lambda i: (records[i]["tree_index"], -records[i]["value"],
                                                       -records[i]["visits"], i))  # fmt: skip
    kept, seen = [], {}
    for i in ranked:
        solutions = seen.setdefault(records[i]["tree_index"], set())
        if len(solutions) < per_question and records[i]["solution"] not in solutions:
            solutions.add(records[i]["solution"])
            kept.append(i)
    columns = [*SOLUTION_FEATURES, "source"]
    return Dataset.from_dict({c: [records[i][c] for i in sorted(kept)] for c in columns})


class RolloutSolutions:
    """Leaf values by verified rollouts (:class:`RolloutValue`) that keeps every verified correct rollout:
    ``found`` holds ``(tree, prefix + rollout text)``, a whole solution the verifier accepted."""

    def __init__(self, engine: RolloutEngine, reward_fn: RewardFn, config: MCLabelConfig) -> None:
        self.reward_fn, self.config = reward_fn, config
        self.rollouts = RolloutValue(engine, self._verify, config)
        self.found: list[tuple[Tree, str]] = []
        self._trees: list[Tree] = []

    def _verify(self, texts: list[str], answers: list[str]) -> list[float]:
        rewards = verify(self.reward_fn, texts, answers)
        n = self.config.num_rollouts  # RolloutValue verifies leaf j's rollouts at j * n .. (j + 1) * n
        self.found += [(self._trees[k // n], text) for k, (text, reward) in enumerate(zip(texts, rewards, strict=True))
                       if reward >= self.config.correct_threshold]  # fmt: skip
        return rewards

    def __call__(self, leaves: Sequence[tuple[Tree, Node]]) -> list[float]:
        self._trees = [tree for tree, _ in leaves]
        return self.rollouts(leaves)


def sft_args(config: ExpertIterationConfig, output_dir: Path, seed: int):
    """TRL SFTConfig of one round (float32 on CPU, no checkpoints: a round's SFT is short)."""
    import torch
    from trl import SFTConfig

    from llmac.distributed import trainer_kwargs

    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=config.sft_epochs,
        per_device_train_batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        lr_scheduler_type=config.sft_lr_scheduler_type,
        warmup_steps=config.sft_warmup_steps,
        weight_decay=0.0,
        max_length=config.sft_max_length,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=torch.cuda.is_available(),
        **trainer_kwargs(),
    )


def sft_on_solutions(
    model_config: ModelConfig, actor: str, solutions_dir: Path, config: ExpertIterationConfig,
    output_dir: Path, seed: int,
) -> Path:  # fmt: skip
    """``llmac sft`` of ``actor`` on a saved solutions dataset (task=file); the SFT'd actor's folder."""
    from llmac.sft import run_sft

    task = TaskConfig(task="file", train_path=str(solutions_dir), solution_field="solution", num_train=0)
    model = replace(model_config, model_name_or_path=str(actor))
    return run_sft(model, task, sft_args(config, output_dir, seed), overwrite=True)


def load_actor_weights(engine: RolloutEngine, actor: str | Path) -> None:
    """Put the actor saved at ``actor`` into the engine (as the trainers sync theirs)."""
    from llmac.models import load_actor

    engine.load_weights(dict(load_actor(actor, "float32").state_dict()))


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """What one round did."""

    round: int
    questions: int  # RL problems searched
    solved_questions: int  # with >= 1 verified correct terminal
    solutions: int  # distinct verified correct terminals of the trees
    rollout_solutions: int  # verified correct leaf rollouts kept as solutions (keep_rollout_solutions)
    sft_rows: int  # kept for SFT
    completions: int  # sampled steps + rollouts (see the module doc)
    step_completions: int
    rollout_completions: int
    generated_tokens: int
    nodes: int
    actor: str  # the actor after this round
    seconds: float


class LeafEvaluators:
    """The leaf evaluator of each batch of trees for ``config.leaf``; ``found`` collects the verified
    correct rollouts of all of them (with ``keep_rollout_solutions``)."""

    def __init__(
        self, engine: CountingEngine, config: ExpertIterationConfig, search: SearchConfig, reward_fn: RewardFn
    ) -> None:
        self.engine, self.config, self.search, self.reward_fn = engine, config, search, reward_fn
        self.found: list[tuple[Tree, str]] = []
        self.critic = None
        if config.leaf != "rollouts":
            from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer

            model = load_critic(config.critic).eval()
            self.critic = CriticValue(model, load_critic_tokenizer(config.critic), critic_delimiter(model))

    def __call__(self, first: int) -> LeafEvaluator:
        """The evaluator of the batch whose first problem is ``first`` (its own rollout seeds)."""
        config, search = self.config, self.search
        if config.leaf == "critic":
            return self.critic
        seed = search.seed + 1 + first * search.iterations * search.max_children * config.num_rollouts
        rollouts = RolloutSolutions(self.engine, self.reward_fn, MCLabelConfig(
            num_rollouts=config.num_rollouts, temperature=search.temperature, top_p=search.top_p,
            max_new_tokens=config.rollout_max_new_tokens, seed=seed,
            correct_threshold=search.correct_threshold))  # fmt: skip
        if config.keep_rollout_solutions:
            rollouts.found = self.found  # shared: every batch adds to it
        return rollouts if self.critic is None else MixedValue(self.critic, rollouts, config.critic_weight)


def check_output_dir(model_config: ModelConfig, config: ExpertIterationConfig) -> Path:
    """Raise unless ``config.output_dir`` may be written (reads the disk only: before any model loads)."""
    if not config.output_dir:
        raise ConfigError(f"llmac {COMMAND}: --output_dir is required")
    out = Path(config.output_dir)
    check_output(out, COMMAND, overwrite=config.overwrite, sources=[model_config.model_name_or_path])
    return out


def run_expert_iteration(
    model_config: ModelConfig,
    task_config: TaskConfig,
    search: SearchConfig,
    config: ExpertIterationConfig,
    engine: RolloutEngine,
    after_round: Callable[[RoundResult], None] | None = None,
) -> list[RoundResult]:
    """``config.rounds`` rounds from the engine's current weights (those of ``model_config``'s actor).

    The engine ends with the last round's actor. ``after_round`` runs after each round's weights are
    in the engine (e.g. a held-out evaluation); its time is not in the round's ``seconds``.
    """
    out = check_output_dir(model_config, config)
    claim_output(out, COMMAND)
    reward_fn = get_reward_fn(config.reward)
    rows = load_task(task_config, "rl").shuffle(seed=search.seed)
    questions, answers = list(rows["question"]), [str(a) for a in rows["answer"]]
    counting = CountingEngine(engine)
    evaluators = LeafEvaluators(counting, config, search, reward_fn)
    rollouts_per_node = 0 if config.leaf == "critic" else config.num_rollouts
    actor, cursor, results = model_config.model_name_or_path, 0, []
    for number in range(1, config.rounds + 1):
        started = time.perf_counter()
        if cursor >= len(questions):
            raise ConfigError(f"llmac {COMMAND}: the {len(questions)} RL problems ran out before round "
                              f"{number}; ask for more (--num_train) or a smaller budget")  # fmt: skip
        built = build_trees(
            counting, questions, answers, search, evaluators, reward_fn, cursor, config.trees_per_batch,
            rollouts_per_node, config.completion_budget,
            None if config.completion_budget else config.questions_per_round,
        )  # fmt: skip
        cursor = built.next_question
        solutions = verified_solution_rows(built.trees)
        data = sft_rows(built.trees, config.max_solutions_per_question, evaluators.found)
        evaluators.found.clear()
        round_dir = out / f"round-{number}"
        if len(data):
            data_dir = save_dataset_atomically(data, round_dir / "solutions", COMMAND, overwrite=True)
            actor = str(sft_on_solutions(model_config, actor, data_dir, config, round_dir / "actor",
                                         search.seed + number))  # fmt: skip
            load_actor_weights(engine, actor)
        else:
            logger.warning("round %d found no verified solution: the actor is unchanged", number)
        result = RoundResult(
            round=number,
            questions=len(built.trees),
            solved_questions=sum(tree.root.has_correct_terminal() for tree in built.trees),
            solutions=len(solutions),
            rollout_solutions=sum(source == "rollout" for source in data["source"]),
            sft_rows=len(data),
            completions=built.count.completions,
            step_completions=built.count.step_completions,
            rollout_completions=built.count.rollout_completions,
            generated_tokens=built.count.generated_tokens,
            nodes=sum(s.nodes for s in built.stats),
            actor=str(actor),
            seconds=time.perf_counter() - started,
        )
        results.append(result)
        logger.info("expert iteration round %d: %s", number, json.dumps(asdict(result)))
        write_text_atomically(out / "rounds.jsonl", "".join(json.dumps(asdict(r)) + "\n" for r in results))
        if after_round is not None:
            after_round(result)
    write_marker(out, COMMAND, complete=True)
    return results


# What `llmac mcts iterate` fills, in order.
CONFIG_CLASSES = (ModelConfig, TaskConfig, EngineConfig, SearchConfig, ExpertIterationConfig)


def main(argv: Sequence[str] | None = None) -> list[RoundResult]:
    """``llmac mcts iterate``: expert iteration from ``--model_name_or_path`` (an SFT'd actor folder)."""
    model_config, task_config, engine_config, search, config = parse_config(
        CONFIG_CLASSES, argv, prog=f"llmac {COMMAND}"
    )
    if model_config.model_name_or_path == "tiny":
        raise ConfigError(
            f"llmac {COMMAND}: --model_name_or_path must be an actor folder (e.g. `llmac sft`'s)"
        )
    check_output_dir(model_config, config)
    engine = build_engine(model_config.model_name_or_path, engine_config)
    try:
        results = run_expert_iteration(model_config, task_config, search, config, engine)
    finally:
        engine.close()
    for r in results:
        print(f"round {r.round}: {r.solved_questions}/{r.questions} problems solved, {r.sft_rows} SFT rows, "
              f"{r.completions} completions -> {r.actor}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
