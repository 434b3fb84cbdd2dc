"""``CritiqueRLConfig``: every switch of ``llmac critique train`` (Critique-RL), one documented field each.

Field names never clash with the other configs the command reads (:class:`~llmac.config.ModelConfig`
for the critic, ``TaskConfig``, ``EngineConfig``), so one recipe fills them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmac.config import option
from llmac.critique.format import get_critique_format
from llmac.critique.rewards import critique_reward_names, get_critique_reward
from llmac.field_groups import OptimizerFields, with_default
from llmac.outputs import overwrite_field
from llmac.validation import check_fields, require

# The reward each stage trains on by default (ALGORITHMS.md section 6).
STAGE_REWARDS = {1: "discrimination", 2: "helpfulness"}


@dataclass
class CritiqueRLConfig(OptimizerFields):
    """How Critique-RL samples the frozen actor's solutions, critiques them and updates the critic."""

    # -- run ---------------------------------------------------------------------------------------
    output_dir: str = option(
        "runs/critique_rl", "Run folder: metrics.jsonl, checkpoints/, and the final critic/."
    )
    actor: str = option(
        "", "The frozen actor (a saved model folder): it answers and refines; it is only sampled."
    )
    stage: int = option(
        1,
        "1: discriminability (verdict against the oracle); 2: helpfulness (the refined answer), run "
        "from the stage-I critic. Picks the default `reward`.",
        choices=(1, 2),
    )
    reward: str | None = option(
        None,
        "Critique reward by name (llmac.critique.rewards): discrimination (stage I), helpfulness "
        "(stage II), delta (r_delta), correct (r_correct); None: the stage's.",
    )
    reference_model: str | None = option(
        None,
        "The KL reference; None: the critic the run starts from (the SFT'd critic in stage I, the "
        "stage-I critic in stage II).",
    )
    seed: int = option(0, "Seed of prompt order, sampling and minibatch order.", range="[0, inf)")
    num_iterations: int = option(40, "Iterations (sample, critique, reward, update).", range="[1, inf)")
    checkpoint_every: int = option(
        10,
        "Resumable checkpoint every k iterations (0: never; the final critic is always saved).",
        range="[0, inf)",
    )
    keep_checkpoints: int = option(2, "Checkpoints kept on disk (the newest).", range="[1, inf)")
    eval_every: int = option(
        10,
        "Every k iterations (0: never): greedy critiques of the actor's greedy held-out solutions "
        "(Acc@Dis) and one greedy refinement (Acc after refine).",
        range="[0, inf)",
    )
    eval_problems: int = option(
        100, "Held-out problems of that evaluation (0: every held-out problem).", range="[0, inf)"
    )
    report_to: str = option("none", "Trackers, comma-separated: tensorboard, wandb, trackio or none.")
    progress: bool = option(True, "Show a progress bar over iterations.")
    overwrite: bool = overwrite_field()

    # -- the actor's solutions and refinements -----------------------------------------------------
    answer_reward: str = option(
        "math",
        "What judges the actor's answers (the oracle correctness): a reward name or 'module:function'.",
    )
    actor_temperature: float = option(1.0, "Temperature of the actor's solutions.", range="[0, inf)")
    actor_max_new_tokens: int = option(96, "Tokens per actor solution at most.", range="[1, inf)")
    refine_mode: str = option(
        "regenerate",
        "How the actor refines a rejected solution: 'regenerate' (continue from the steps before the "
        "first flagged one; any model) or 'rewrite' (follow the critique; instruction-tuned actors).",
        choices=("regenerate", "rewrite"),
    )
    balance_solutions: bool = option(
        True,
        "Critique as many right solutions as wrong ones each iteration (the larger side subsampled): "
        "with the testbed's 74% wrong answers, stage I otherwise learns to say 'Wrong' to everything "
        "(greedy Acc@Dis on right answers 82% -> 4% in 20 iterations).",
    )
    refine_temperature: float = option(
        1.0,
        "Actor temperature when refining. In 'regenerate' mode greedy decoding (0) from the same prefix "
        "repeats the flagged step: on the testbed it refines nothing (22.3% -> 22.3%), T=1 does.",
        range="[0, inf)",
    )
    refine_max_new_tokens: int = option(96, "Tokens per refinement at most.", range="[1, inf)")

    # -- critiques ---------------------------------------------------------------------------------
    critique_format: str = option("compact", "Critique layout: 'compact' (tiny CPU model) or 'verbose'.")
    prompts_per_iteration: int = option(
        16, "Problems per iteration: one actor solution each (over all processes).", range="[1, inf)"
    )
    samples_per_prompt: int = option(
        4, "k: critiques per solution, the RLOO group (4 in the authors' runs).", range="[2, inf)"
    )
    temperature: float = option(
        0.7, "Critic sampling temperature (0.7 in the authors' runs).", range="(0, inf)"
    )
    top_p: float = option(1.0, "Critic nucleus sampling mass.", range="(0, 1]")
    max_new_tokens: int = option(128, "Tokens per critique at most.", range="[1, inf)")
    max_prompt_length: int = option(
        512, "Critique requests with more tokens are dropped (and counted).", range="[1, inf)"
    )

    # -- objective and optimisation ----------------------------------------------------------------
    kl_coef: float = option(
        0.01, "Weight of the summed KL to the reference, taken from each critique's reward.", range="[0, inf)"
    )
    clip: float = option(
        0.2, "PPO clip of the ratio on later passes (the first pass is REINFORCE).", range="[0, 1)"
    )
    loss_aggregation: str = option(
        "token",
        "'token': mean over the batch's tokens; 'sequence': mean of each critique's token mean.",
        choices=("token", "sequence"),
    )
    epochs: int = option(1, "Passes over each iteration's critiques.", range="[1, inf)")
    mini_batch_size: int = option(64, "Critiques per optimizer step on each process.", range="[1, inf)")
    micro_batch_size: int = option(32, "Critiques per forward pass.", range="[1, inf)")
    learning_rate: float = with_default(OptimizerFields, "learning_rate", 5e-7)  # the authors' runs

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.actor), "actor: give the frozen actor's model folder (--actor PATH)")
        get_critique_format(self.critique_format)  # a ConfigError naming the known formats
        if self.reward is not None:
            require(
                self,
                self.reward in critique_reward_names(),
                f"reward {self.reward!r}: one of {', '.join(critique_reward_names())}",
            )

    @property
    def reward_name(self) -> str:
        """The critique reward this run trains on."""
        return self.reward or STAGE_REWARDS[self.stage]

    def optimizer_steps_per_iteration(self, num_processes: int = 1) -> int:
        per_process = math.ceil(self.prompts_per_iteration / num_processes) * self.samples_per_prompt
        return self.epochs * math.ceil(per_process / self.mini_batch_size)


def reads_refinement(reward_name: str) -> bool:
    """Whether the critique reward ``reward_name`` scores the refined answer (so the actor must refine).

    A reward that needs it raises on an outcome without one (:mod:`llmac.critique.rewards`).
    """
    from llmac.critique.rewards import CritiqueOutcome

    try:
        get_critique_reward(reward_name)(CritiqueOutcome(True, True, None))
    except ValueError:
        return True
    return False
