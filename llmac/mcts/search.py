"""MCTS over steps, many trees at once so that every engine call is one large batch.

One iteration, for all trees together:

1. select: in every tree, descend by UCT/PUCT to a terminal or an unexpanded node;
2. a selected terminal backs up its value again (its verdict, +1/-1 or 1/0, see :mod:`llmac.mcts.tree`);
3. expand: ONE ``engine.sample_step`` call asks ``branching`` candidate next steps of every selected
   unexpanded node (prompt + the exact token ids generated so far, so vLLM's prefix cache shares
   the prefix); each node gets one child per distinct step with visible text (a node with none
   becomes a terminal, see :meth:`llmac.mcts.tree.Tree.expand`);
4. new terminal children are verified (one reward-function batch); the others are evaluated by
   the leaf evaluator (:mod:`llmac.mcts.values`: critic, rollouts or a mix; one batch). Without a
   reward function (``reward_fn=None``: test-time search guided by the critic alone) terminals are
   evaluated by the leaf evaluator too, and keep that value (``Node.evaluation``);
5. back up: each new child gets one visit with its value, which also counts in every ancestor.

So a node's ``q`` is the mean of all evaluations made in its subtree. Determinism: step sample ``k``
of the ``j``-th node expanded in the whole search is asked for with seed ``seed + j * branching + k``
(VLLMEngine's per-request seeds), whatever the batch.

Cost. Each tree counts the step samples drawn for it and their tokens (``Tree.step_samples``,
``Tree.step_tokens``); :class:`~llmac.mcts.values.RolloutValue` adds its rollouts' tokens
(``Tree.rollout_tokens``), so coverage can be compared at equal generated tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from llmac.config import option
from llmac.data.loading import format_prompt
from llmac.engines.base import RolloutEngine, SamplingConfig
from llmac.mcts.select import SELECTION_RULES
from llmac.mcts.tree import VALUE_SCALES, Node, StepSample, Tree, from_probability
from llmac.mcts.values import LeafEvaluator
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn
from llmac.validation import check_fields

logger = logging.getLogger(__name__)


@dataclass
class SearchConfig:
    """Tree search over steps: selection, expansion, limits, value scale."""

    iterations: int = option(32, "Select-expand-evaluate-backup rounds per tree.", range="[1, inf)")
    branching: int = option(4, "b: candidate steps sampled per expansion.", range="[1, inf)")
    max_children: int = option(
        4, "Width limit: distinct children kept per node (most sampled first).", range="[1, inf)"
    )
    max_depth: int = option(16, "Depth limit: a node this many steps deep is terminal.", range="[1, inf)")
    selection: str = option(
        "uct",
        "'uct' (Q + c sqrt(ln N_p / N)) or 'puct' (Q + c P sqrt(N_p) / (1 + N)).",
        choices=SELECTION_RULES,
    )
    c: float = option(2.0, "Exploration constant (rStar-Math uses 2 with UCT).", range="[0, inf)")
    scale: str = option(
        "pm1", "Values: 'pm1' (terminal +1/-1, leaf 2p - 1) or '01' (1/0, leaf p).", choices=VALUE_SCALES
    )
    temperature: float = option(1.0, "Sampling temperature of candidate steps.", range="[0, inf)")
    top_p: float = option(1.0, "Nucleus sampling mass of candidate steps.", range="(0, 1]")
    max_step_tokens: int = option(128, "Tokens generated at most per step.", range="[1, inf)")
    seed: int = option(0, "Base seed of the step samples.", range="[0, inf)")
    correct_threshold: float = option(
        0.5, "A terminal is correct when its reward is >= this (math rewards are 0/1).", range="(-inf, inf)"
    )
    system_prompt: str | None = option(None, "System prompt of the chat template, if any.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SearchStats:
    """What a search did, for progress bars and throughput numbers."""

    iterations: int = 0
    engine_calls: int = 0  # sample_step calls
    expanded: int = 0  # nodes expanded
    nodes: int = 0  # nodes created
    step_samples: int = 0
    generated_tokens: int = 0  # by sample_step (rollout tokens are the evaluator's)


def new_trees(
    engine: RolloutEngine, questions: Sequence[str], answers: Sequence[str], config: SearchConfig
) -> list[Tree]:
    """One empty tree per question, its prompt in the engine tokenizer's chat template."""
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    return [
        Tree(
            question=q,
            answer=a,
            prompt=format_prompt(engine.tokenizer, q, config.system_prompt),
            scale=config.scale,
            max_depth=config.max_depth,
            max_children=config.max_children,
        )
        for q, a in zip(questions, answers, strict=True)
    ]


class Search:
    """Advances a set of trees together; call :meth:`step` once per iteration or :meth:`run`."""

    def __init__(
        self,
        engine: RolloutEngine,
        trees: Sequence[Tree],
        config: SearchConfig,
        evaluate: LeafEvaluator,
        reward_fn: RewardFn | None,
    ) -> None:
        """``reward_fn`` verifies terminals; None values them with ``evaluate`` (no verifier)."""
        self.engine, self.trees, self.config = engine, list(trees), config
        self.evaluate, self.reward_fn = evaluate, reward_fn
        self.stats = SearchStats()

    def run(self, iterations: int | None = None) -> SearchStats:
        for _ in range(self.config.iterations if iterations is None else iterations):
            self.step()
        return self.stats

    def step(self) -> None:
        cfg = self.config
        leaves = [(tree, tree.select_leaf(cfg.selection, cfg.c)) for tree in self.trees]
        for tree, node in leaves:
            if node.terminal:
                tree.backup(node, tree.terminal_value(node))
        new = self._expand([(tree, node) for tree, node in leaves if not node.terminal])
        values = self._values(new)
        for (tree, child), value in zip(new, values, strict=True):
            tree.backup(child, value)
        self.stats.iterations += 1

    def _expand(self, leaves: list[tuple[Tree, Node]]) -> list[tuple[Tree, Node]]:
        if not leaves:
            return []
        cfg = self.config
        sampling = SamplingConfig(
            n=cfg.branching,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_step_tokens,
            seed=cfg.seed + self.stats.expanded * cfg.branching,
        )
        groups = self.engine.sample_step(
            [tree.prompt for tree, _ in leaves], [node.prefix_ids() for _, node in leaves], sampling
        )
        self.stats.engine_calls += 1
        self.stats.expanded += len(leaves)
        new = []
        for (tree, node), group in zip(leaves, groups, strict=True):
            samples = [StepSample(c.text, list(c.token_ids), c.finish_reason != "step") for c in group]
            tokens = sum(len(s.token_ids) for s in samples)
            self.stats.step_samples += len(samples)
            self.stats.generated_tokens += tokens
            tree.step_samples += len(samples)
            tree.step_tokens += tokens
            children = tree.expand(node, samples)
            self.stats.nodes += len(children)
            new += [(tree, child) for child in children] if children else [(tree, node)]  # now terminal
        return new

    def _values(self, new: list[tuple[Tree, Node]]) -> list[float]:
        """Each new node's value on its tree's scale: terminals verified, the others evaluated."""
        values = [0.0] * len(new)
        verified = self.reward_fn is not None
        terminal = [i for i, (_, node) in enumerate(new) if node.terminal and verified]
        if terminal:
            texts = [new[i][1].prefix_text() for i in terminal]
            rewards = verify(self.reward_fn, texts, [new[i][0].answer for i in terminal])
            for i, reward in zip(terminal, rewards, strict=True):
                tree, node = new[i]
                values[i] = tree.set_verdict(node, reward, reward >= self.config.correct_threshold)
        inner = [i for i, (_, node) in enumerate(new) if not (node.terminal and verified)]
        if inner:
            probs = self.evaluate([new[i] for i in inner])
            if len(probs) != len(inner):
                raise ValueError(f"leaf evaluator returned {len(probs)} values for {len(inner)} nodes")
            for i, p in zip(inner, probs, strict=True):
                tree, node = new[i]
                values[i] = from_probability(p, tree.scale)
                if node.terminal:
                    node.evaluation = values[i]
        return values


def search(
    engine: RolloutEngine,
    questions: Sequence[str],
    answers: Sequence[str],
    config: SearchConfig,
    evaluate: LeafEvaluator,
    reward_fn: RewardFn | None,
) -> tuple[list[Tree], SearchStats]:
    """Build one tree per question with ``config.iterations`` batched iterations."""
    trees = new_trees(engine, questions, answers, config)
    stats = Search(engine, trees, config, evaluate, reward_fn).run()
    logger.info(
        "searched %d trees: %d iterations, %d engine calls, %d nodes",
        len(trees), stats.iterations, stats.engine_calls, stats.nodes,
    )  # fmt: skip
    return trees, stats
