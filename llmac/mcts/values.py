"""Leaf evaluators: P(correct | step prefix) for the new, non-terminal nodes of an iteration.

Every evaluator takes all the nodes to evaluate in one call (all trees together) and returns one
number in [0, 1] per node; the search puts it on the tree's value scale.

- :class:`CriticValue`: the step critic's value at the prefix's last step (one forward pass each);
  a prefix with no visible text (an empty response) is worth 0.
- :class:`RolloutValue`: the share of ``num_rollouts`` continuations to a final answer that the
  verifier accepts (one engine call for all nodes, ``n = num_rollouts``).
- :class:`MixedValue`: ``weight * critic + (1 - weight) * rollouts`` (AlphaGo's mix).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from llmac.critic.labelling import MCLabelConfig
from llmac.critic.scoring import score_steps
from llmac.engines.base import RolloutEngine
from llmac.mcts.tree import Node, Tree
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn

Leaf = tuple[Tree, Node]


class LeafEvaluator(Protocol):
    """P(final answer correct) for each (tree, node), in [0, 1]."""

    def __call__(self, leaves: Sequence[Leaf]) -> list[float]: ...


class CriticValue:
    """The step critic's value read at the end of each prefix's last step."""

    def __init__(self, model, tokenizer, delimiter: str, batch_size: int = 32) -> None:
        self.model, self.tokenizer, self.delimiter, self.batch_size = model, tokenizer, delimiter, batch_size

    def __call__(self, leaves: Sequence[Leaf]) -> list[float]:
        if not leaves:
            return []
        texts = [node.prefix_text() for _, node in leaves]  # ends with the delimiter: read there
        scored = [i for i, text in enumerate(texts) if text.strip()]
        questions = [leaves[i][0].question for i in scored]
        values = score_steps(self.model, self.tokenizer, questions, [texts[i] for i in scored],
                             self.delimiter, self.batch_size)  # fmt: skip
        out = [0.0] * len(leaves)
        for i, v in zip(scored, values, strict=True):
            out[i] = v[-1]
        return out


class RolloutValue:
    """The share of rollouts from each node whose final answer the verifier accepts."""

    def __init__(
        self, engine: RolloutEngine, reward_fn: RewardFn, config: MCLabelConfig | None = None
    ) -> None:
        """``config``: the rollouts' sampling, as MC step labelling takes it (its ``batch_size`` unused);
        rollout k of the j-th node evaluated gets seed ``config.seed + j * num_rollouts + k``."""
        self.engine, self.reward_fn = engine, reward_fn
        self.config = config or MCLabelConfig(num_rollouts=4, seed=1)
        self.evaluated = 0  # nodes evaluated so far: the seed offset of the next call
        self.generated_tokens = 0

    def __call__(self, leaves: Sequence[Leaf]) -> list[float]:
        if not leaves:
            return []
        cfg = self.config
        sampling = cfg.sampling(cfg.seed + self.evaluated * cfg.num_rollouts)
        self.evaluated += len(leaves)
        prompts = [tree.prompt for tree, _ in leaves]
        groups = self.engine.continue_from(prompts, [node.prefix_ids() for _, node in leaves], sampling)
        texts, answers = [], []
        for (tree, node), group in zip(leaves, groups, strict=True):
            prefix = node.prefix_text()
            texts += [prefix + c.text for c in group]
            answers += [tree.answer] * len(group)
            tokens = sum(len(c.token_ids) for c in group)
            self.generated_tokens += tokens
            tree.rollout_tokens += tokens
        rewards = verify(self.reward_fn, texts, answers)
        n = cfg.num_rollouts
        return [
            sum(r >= cfg.correct_threshold for r in rewards[i * n : (i + 1) * n]) / n
            for i in range(len(leaves))
        ]


class MixedValue:
    """``weight * first + (1 - weight) * second`` (e.g. critic and rollouts)."""

    def __init__(self, first: LeafEvaluator, second: LeafEvaluator, weight: float = 0.5) -> None:
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"mix weight must be in [0, 1], got {weight}")
        self.first, self.second, self.weight = first, second, weight

    def __call__(self, leaves: Sequence[Leaf]) -> list[float]:
        a, b = self.first(leaves), self.second(leaves)
        return [self.weight * x + (1.0 - self.weight) * y for x, y in zip(a, b, strict=True)]
