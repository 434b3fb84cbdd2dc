"""The configs of ``llmac mcts build | solve | view`` (YAML recipe + CLI flags).

The search itself is :class:`~llmac.mcts.search.SearchConfig` (iterations, branching, limits, UCT/PUCT,
the step samples' temperature and seed); these configs say which questions, how leaves are valued,
what is written, and where. Field names never clash with ``SearchConfig``, ``ModelConfig``,
``TaskConfig`` or ``EngineConfig``, so one recipe fills them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmac.config import option
from llmac.data.tasks import SPLITS
from llmac.outputs import overwrite_field
from llmac.validation import check_fields, require

LEAF_VALUES = ("rollouts", "critic", "mix")
# export name -> what it is (the functions are in llmac.mcts.build.EXPORTS)
EXPORT_NAMES = {
    "value_labels": "step value labels, Math-Shepherd/TRL-PRM layout (`llmac critic train`)",
    "preference_pairs": "best child against each lower sibling (CR-Planner)",
    "rstar_pairs": "highest-Q correct-leading against lowest-Q wrong-leading children (rStar-Math)",
    "verified_solutions": "every distinct verified correct solution (`llmac sft`)",
    "revision_trajectories": "bad prefix + revision phrase + good continuation (Agent-R)",
    "critique_pairs": "diverging correct/wrong paths and the wrong one's first wrong step (MMC)",
}
ANSWER_RULES = ("value", "visits")


@dataclass
class QuestionFields:
    """Which questions are searched, and how they are split into resumable shards."""

    output_dir: str = option("", "The output folder (written atomically; a killed run resumes).")
    split: str = option("rl", "Task split whose questions are searched.", choices=SPLITS)
    num_questions: int = option(0, "Search the split's first N questions (0: all).", range="[0, inf)")
    questions_per_shard: int = option(
        16,
        "Trees searched together (one engine batch per iteration) and saved as one resumable shard.",
        range="[1, inf)",
    )
    critic_batch_size: int = option(32, "Prefixes per critic forward pass.", range="[1, inf)")
    progress: bool = option(True, "Show a progress bar (trees/s, nodes/s).")
    overwrite: bool = overwrite_field()


@dataclass
class MCTSBuildConfig(QuestionFields):
    """``llmac mcts build``: trees on a task's questions, valued by rollouts + verifier, a critic or both."""

    leaf_value: str = option(
        "rollouts",
        "How a new node is valued: 'rollouts' (share of verified continuations), 'critic' (the step "
        "critic's value) or 'mix' (critic_weight * critic + (1 - critic_weight) * rollouts). Terminals "
        "are always verified.",
        choices=LEAF_VALUES,
    )
    critic: str | None = option(None, "The step critic folder (`llmac critic train`), for critic or mix.")
    critic_weight: float = option(0.5, "mix: the critic's weight.", range="[0, 1]")
    num_rollouts: int = option(4, "rollouts/mix: continuations per new node.", range="[1, inf)")
    rollout_temperature: float = option(1.0, "Temperature of the leaf rollouts.", range="[0, inf)")
    rollout_max_new_tokens: int = option(256, "Tokens per leaf rollout at most.", range="[1, inf)")
    reward: str = option("math", "The verifier: a registered reward name or 'package.module:function'.")
    exports: str = option(
        "value_labels,verified_solutions",
        "Comma-separated datasets written beside the trees: " + ", ".join(EXPORT_NAMES) + ".",
    )
    min_visits: int = option(1, "Exports: nodes visited fewer times are left out.", range="[1, inf)")
    preference_margin: float = option(
        0.0, "preference_pairs: the rejected step's value is more than this below the chosen.", range="[0, 1]"
    )
    rstar_k: int = option(2, "rstar_pairs: k best and k worst children per node.", range="[1, inf)")
    revision_alpha: float = option(
        0.5, "revision_trajectories: the good path's reward is at least this.", range="(-inf, inf)"
    )
    revision_beta: float = option(
        0.0, "revision_trajectories: the reward gap good - bad is more than this.", range="(-inf, inf)"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, self.leaf_value == "rollouts" or bool(self.critic),
                f"leaf_value={self.leaf_value} needs --critic (a step critic folder)")  # fmt: skip
        unknown = [name for name in self.export_list() if name not in EXPORT_NAMES]
        require(self, not unknown,
                f"exports: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(EXPORT_NAMES)}")  # fmt: skip

    def export_list(self) -> list[str]:
        """The exports asked for, in order, without repeats."""
        names = [name.strip() for name in self.exports.split(",") if name.strip()]
        return list(dict.fromkeys(names))


@dataclass
class MCTSSolveConfig(QuestionFields):
    """``llmac mcts solve``: answer questions by search guided by the critic alone (no verifier)."""

    split: str = option("eval", "Task split whose questions are answered.", choices=SPLITS)
    critic: str = option("", "The step critic folder: it values every new node, terminals included.")
    answer_by: str = option(
        "value",
        "Which path answers: 'value' (the best-valued terminal, then most visited) or 'visits' (the "
        "most visited path). A chosen path that does not end the response is finished greedily.",
        choices=ANSWER_RULES,
    )
    finish_max_new_tokens: int = option(
        256, "Tokens at most of the greedy finish of a path that did not end.", range="[1, inf)"
    )
    reward: str = option("math", "Only scores the answers against the gold (never guides the search).")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class MCTSViewConfig:
    """``llmac mcts view``: one HTML page per tree of a built trees dataset."""

    trees: str = option("", "A `llmac mcts build` output folder, or its trees/ dataset.")
    output_dir: str = option("", "Where the pages (tree-00000.html, ..., index.html) are written.")
    max_trees: int = option(100, "Pages for at most this many trees (the first ones).", range="[1, inf)")
    answer_by: str = option(
        "value",
        "The path marked as chosen: 'value' (the best-valued terminal) or 'visits' (the most visited path).",
        choices=ANSWER_RULES,
    )
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
