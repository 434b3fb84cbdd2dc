"""``PPOConfig``: every switch of the PPO trainer, one documented field each (YAML recipe + CLI flags)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmac.config import option
from llmac.field_groups import OptimizerFields, SamplingFields, with_default
from llmac.outputs import overwrite_field
from llmac.rl.estimators import ESTIMATORS, get_estimator
from llmac.validation import check_fields, require

ADVANTAGE_ESTIMATORS = tuple(ESTIMATORS)


@dataclass
class PPOConfig(OptimizerFields, SamplingFields):
    """How llmac's PPO samples, scores, and updates the actor (and its value model)."""

    # -- run ---------------------------------------------------------------------------------------
    output_dir: str = option(
        "runs/ppo", "Run folder: metrics.jsonl, checkpoints/, and the final actor/ and critic/."
    )
    seed: int = option(0, "Seed of prompt order, sampling and minibatch order.", range="[0, inf)")
    num_iterations: int = option(40, "PPO iterations (sample, score, update).", range="[1, inf)")
    checkpoint_every: int = option(
        10,
        "Save a resumable checkpoint every k iterations (0: never; the final actor is always saved).",
        range="[0, inf)",
    )
    keep_checkpoints: int = option(2, "Checkpoints kept on disk (the newest).", range="[1, inf)")
    eval_every: int = option(
        10, "Greedy accuracy on held-out problems every k iterations (0: never).", range="[0, inf)"
    )
    eval_samples: int = option(
        4,
        "Samples per held-out problem for the sampled accuracy (at the rollout temperature; 0: greedy only).",
        range="[0, inf)",
    )
    report_to: str = option(
        "none", "Trackers for the metrics, comma-separated: tensorboard, wandb, trackio or none."
    )
    progress: bool = option(True, "Show a progress bar over iterations.")
    hub_model_id: str | None = option(
        None,
        "Push the final actor to this Hub repository (user/name), with a model card of the run's "
        "held-out metrics (see `llmac export`); none: keep it local.",
    )
    hub_private_repo: bool = option(False, "Create the Hub repository private.")
    overwrite: bool = overwrite_field()

    # -- rollouts (top_p: SamplingFields) -----------------------------------------------------------
    prompts_per_iteration: int = option(
        32, "Prompts sampled per iteration (over all processes).", range="[1, inf)"
    )
    samples_per_prompt: int = option(4, "Completions per prompt (the group size).", range="[1, inf)")
    temperature: float = option(
        1.0,
        "Sampling temperature of the rollouts (> 0: the PPO ratio's log-probs divide the logits by it).",
        range="(0, inf)",
    )
    max_new_tokens: int = with_default(SamplingFields, "max_new_tokens", 96)
    async_rollouts: bool = option(
        False,
        "Sample the next iteration's rollouts while this one scores and updates (one-step "
        "off-policy: they come from the weights before this update, and the PPO ratio is taken against "
        "the trainer's current weights). Hides generation behind training; an iteration that saves a "
        "checkpoint does not sample ahead, so resuming stays exact.",
    )
    max_prompt_length: int = option(
        256, "Prompts with more tokens are skipped at load time (and counted in the log).", range="[1, inf)"
    )
    reward: str = option("math", "Reward function: a registered name or 'package.module:function'.")
    dynamic_sampling: bool = option(
        False,
        "Drop groups whose rewards are all equal (no signal for group advantages) and sample "
        "more prompts until the batch is full (ByteDance DAPO).",
    )
    max_sampling_rounds: int = option(
        4,
        "Dynamic sampling: rounds of prompts tried per iteration before training on less.",
        range="[1, inf)",
    )
    overlong_buffer: int = option(
        0,
        "Soft overlong shaping: completions within this many tokens of max_new_tokens get a "
        "linearly growing penalty down to -1 (0: off).",
        range="[0, inf)",
    )

    # -- advantages and rewards --------------------------------------------------------------------
    advantage_estimator: str = option(
        "step_gae",
        "step_gae (value read once per step, the step's advantage broadcast to its tokens), "
        "token_gae, or the critic-free grpo, rloo, lite_ppo (group mean, batch std).",
        choices=ADVANTAGE_ESTIMATORS,
    )
    gamma: float = option(1.0, "GAE discount (per step for step_gae).", range="[0, 1]")
    lam: float = option(0.95, "GAE lambda.", range="[0, 1]")
    whiten_advantages: bool = option(True, "GAE estimators: normalise advantages over the batch's tokens.")
    process_reward_model: str | None = option(
        None, "A step critic whose value at each step end is added as a process reward."
    )
    process_reward_coef: float = option(1.0, "Weight of the process reward.", range="[0, inf)")

    # -- losses ------------------------------------------------------------------------------------
    old_logprobs: str = option(
        "trainer",
        "Log-probs the PPO ratio starts from: 'trainer' recomputes them with a forward pass of the "
        "actor before the updates; 'engine' takes the rollout engine's (one actor forward pass less per "
        "iteration; exact when the engine runs the trainer's weights in the same precision, and under "
        "async_rollouts the ratio then corrects for the stale sampler). Needs temperature 1 (engines "
        "report log-probs of the unscaled logits).",
        choices=("trainer", "engine"),
    )
    clip_low: float = option(0.2, "PPO clip: ratio floor is 1 - clip_low.", range="[0, 1)")
    clip_high: float = option(
        0.2, "PPO clip: ratio ceiling is 1 + clip_high (0.28 is clip-higher).", range="[0, inf)"
    )
    loss_aggregation: str = option(
        "token",
        "'token': sum of token losses over the batch's tokens (DAPO, Lite PPO); 'sequence': "
        "mean over completions of each one's token mean (original GRPO).",
        choices=("token", "sequence"),
    )
    kl_coef: float = option(0.0, "Weight of the KL to the frozen reference (0: none).", range="[0, inf)")
    kl_in: str = option(
        "reward", "Where the KL goes: 'reward' (per-token penalty) or 'loss'.", choices=("reward", "loss")
    )
    kl_estimator: str = option("k1", "KL estimator: k1, k2 or k3.", choices=("k1", "k2", "k3"))
    value_clip: float = option(
        0.2, "Clip new values to old +- this in the value loss (0: no clipping).", range="[0, inf)"
    )
    value_coef: float = option(0.5, "Weight of the value loss.", range="[0, inf)")
    entropy_coef: float = option(0.0, "Entropy bonus weight.", range="[0, inf)")
    value_warmup_iterations: int = option(
        0, "First iterations that train only the value model.", range="[0, inf)"
    )

    # -- optimisation (learning_rate, weight_decay, lr_scheduler_type, max_grad_norm: OptimizerFields) --
    ppo_epochs: int = option(1, "Passes over each iteration's rollouts.", range="[1, inf)")
    mini_batch_size: int = option(32, "Completions per optimizer step on each process.", range="[1, inf)")
    micro_batch_size: int = option(
        32,
        "Completions per forward pass. Passes take completions of similar length, each padded "
        "only to its own longest, so less compute goes to padding; a minibatch still makes one "
        "optimizer step. Lower it to save activation memory.",
        range="[1, inf)",
    )
    value_learning_rate: float = option(1e-4, "Value model learning rate.", range="(0, inf)")
    warmup_steps: int = with_default(OptimizerFields, "warmup_steps", 10)
    optimizer: str = option(
        "adamw",
        "adamw, or sgd (plain, no momentum: a step moves each weight by the learning rate times "
        "its gradient, so the gradient's scale shows; the multi-process tests use it).",
        choices=("adamw", "sgd"),
    )

    # -- value model -------------------------------------------------------------------------------
    value_model: str | None = option(
        None,
        "Step critic to start the value model from (`llmac critic train` output); None builds "
        "one from the actor with a zero value head. Unused by critic-free estimators.",
    )
    value_activation: str = option(
        "sigmoid",
        "'sigmoid' (values in (0,1), as a step critic trained on success probabilities "
        "predicts) or 'identity' (unbounded, for rewards outside [0,1]).",
        choices=("sigmoid", "identity"),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, self.old_logprobs == "trainer" or self.temperature == 1.0,
                "old_logprobs='engine' needs temperature 1.0 (engines report log-probs of the unscaled "
                "logits); use old_logprobs='trainer' for another temperature")  # fmt: skip
        require(self, self.samples_per_prompt >= 2 or self.uses_value_model,
                f"{self.advantage_estimator} needs samples_per_prompt >= 2 (it compares a group's samples)")  # fmt: skip
        require(self, self.overlong_buffer <= self.max_new_tokens,
                f"overlong_buffer ({self.overlong_buffer}) must be <= max_new_tokens ({self.max_new_tokens})")  # fmt: skip
        require(self, self.uses_value_model or self.kl_coef == 0 or self.kl_in == "loss",
                "critic-free estimators take the KL in the loss (kl_in='loss'), as GRPO does")  # fmt: skip
        require(self, self.uses_value_model or self.value_warmup_iterations == 0,
                f"value_warmup_iterations needs a value model; {self.advantage_estimator} has none")  # fmt: skip
        require(self, self.uses_value_model or not self.process_reward_model,
                f"process_reward_model needs step_gae or token_gae; {self.advantage_estimator} ignores "
                "process rewards")  # fmt: skip

    def optimizer_steps_per_iteration(self, num_processes: int = 1) -> int:
        """Optimizer steps one iteration makes: ``ppo_epochs`` passes over each process's share."""
        groups_per_process = math.ceil(self.prompts_per_iteration / num_processes)
        return self.ppo_epochs * math.ceil(
            groups_per_process * self.samples_per_prompt / self.mini_batch_size
        )

    @property
    def uses_value_model(self) -> bool:
        return get_estimator(self.advantage_estimator).needs_value_model
