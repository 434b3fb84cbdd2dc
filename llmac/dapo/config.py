"""The configs of ``llmac dapo build`` and ``llmac dapo train`` (YAML recipe + CLI flags).

Field names never clash with the other configs a command reads (:class:`~llmac.config.ModelConfig`,
:class:`~llmac.critic.labelling.MCLabelConfig` for the MC values, ``TaskConfig``, ``EngineConfig``),
so one recipe can fill them all: ``dapo train --rounds 2`` rebuilds with the build fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmac.config import option
from llmac.data.tasks import SPLITS
from llmac.field_groups import OptimizerFields, SolutionFields, with_default
from llmac.outputs import overwrite_field
from llmac.validation import check_fields, require


@dataclass
class DAPOBuildConfig(SolutionFields):
    """Which solutions the reference policy samples (:class:`~llmac.field_groups.SolutionFields`; K of
    the paper is ``num_solutions``) and which of their steps get MC values."""

    data_dir: str = option(
        "", "The built dataset: `dapo build` writes it, `dapo train` reads it (round 1; built if absent)."
    )
    critic_labels_dir: str | None = option(
        None,
        "Also write the values in the Math-Shepherd layout (prompt, completions, labels) here, the "
        "input of `llmac critic train`; None: do not.",
    )
    split: str = option("rl", "Task split whose questions are sampled.", choices=SPLITS)
    num_solutions: int = with_default(SolutionFields, "num_solutions", 8)  # K; 32 in the paper
    keep_solutions: int = option(
        6,
        "Solutions kept per question, balanced between correct and wrong (6 in the paper).",
        range="[1, inf)",
    )
    questions_per_shard: int = option(
        32, "Questions per engine call and per resumable shard.", range="[1, inf)"
    )
    value_all_steps: bool = option(
        True,
        "MC-value the candidates of single-candidate states too. Training skips those states, but "
        "critic labels need a value at every step; turn it off when training reads the MC values "
        "directly, to spend no rollouts on them.",
    )
    reward: str = option("math", "Reward function: a registered name or 'package.module:function'.")
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, self.keep_solutions <= self.num_solutions,
                f"keep_solutions ({self.keep_solutions}) must be <= num_solutions ({self.num_solutions})")  # fmt: skip
        require(self, self.value_all_steps or not self.critic_labels_dir,
                "critic_labels_dir needs value_all_steps: a critic row needs a value at every step")  # fmt: skip


@dataclass
class DAPOTrainConfig(OptimizerFields):
    """How ``llmac dapo train`` fits the actor to the advantages (offline: no sampling while training)."""

    output_dir: str = option("runs/dapo", "Run folder: metrics.jsonl, checkpoints/, train_data/, actor/.")
    critic: str | None = option(
        None,
        "A frozen step critic (`llmac critic train` on critic_labels_dir) whose V(s + a_i) gives the "
        "candidates' values; None (default) uses their MC values directly: they are unbiased estimates "
        "of the same quantity for exactly these candidates, and need no critic stage.",
    )
    shuffle_seed: int = option(0, "Seed of the order of the states (and of torch).", range="[0, inf)")
    beta: float = option(
        0.01, "beta: the log-ratio target is A / beta (0.01 in the paper; larger stays nearer pi_ref).",
        range="(0, inf)",
    )  # fmt: skip
    advantage_threshold: float = option(
        0.1,
        "States whose candidates' values span less than this are skipped (and counted).",
        range="[0, inf)",
    )
    num_epochs: int = option(1, "Passes over the states.", range="[1, inf)")
    states_per_batch: int = option(
        8, "States per optimizer step on each process, each with all its candidates.", range="[1, inf)"
    )
    micro_batch_size: int = option(32, "Candidates per forward pass.", range="[1, inf)")
    learning_rate: float = with_default(OptimizerFields, "learning_rate", 5e-7)  # the paper's value
    rounds: int = option(
        1, "Iterations of the method: round r > 1 sets pi_ref <- pi and rebuilds the data.", range="[1, inf)"
    )
    checkpoint_every: int = option(50, "Resumable checkpoint every k steps (0: never).", range="[0, inf)")
    keep_checkpoints: int = option(2, "Checkpoints kept on disk.", range="[1, inf)")
    eval_every: int = option(
        0, "Held-out accuracy (rollout engine) every k steps and at the end (0: never).", range="[0, inf)"
    )
    eval_samples: int = option(
        0, "Sampled held-out completions per problem (0: greedy only).", range="[0, inf)"
    )
    progress: bool = option(True, "Show progress bars.")

    def __post_init__(self) -> None:
        check_fields(self)
