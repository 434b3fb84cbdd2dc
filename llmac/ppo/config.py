"""``PPOConfig``: every switch of the PPO trainer, one documented field each (YAML recipe + CLI flags)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from llmac.schedules import LR_SCHEDULES

ADVANTAGE_ESTIMATORS = ("step_gae", "token_gae", "grpo", "rloo", "lite_ppo")
VALUE_ESTIMATORS = ("step_gae", "token_gae")


@dataclass
class PPOConfig:
    """How llmac's PPO samples, scores, and updates the actor (and its value model)."""

    # -- run ---------------------------------------------------------------------------------------
    output_dir: str = field(
        default="runs/ppo",
        metadata={"help": "Run folder: metrics.jsonl, checkpoints/, and the final actor/ and critic/."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of prompt order, sampling and minibatch order."})
    num_iterations: int = field(default=40, metadata={"help": "PPO iterations (sample, score, update)."})
    checkpoint_every: int = field(
        default=10,
        metadata={
            "help": "Save a resumable checkpoint every k iterations (0: never; the final actor is always saved)."
        },
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "Checkpoints kept on disk (the newest)."})
    eval_every: int = field(
        default=10, metadata={"help": "Greedy accuracy on held-out problems every k iterations (0: never)."}
    )
    eval_samples: int = field(
        default=4,
        metadata={
            "help": "Samples per held-out problem for the sampled accuracy (at the rollout temperature; 0: greedy only)."
        },
    )
    report_to: str = field(
        default="none",
        metadata={"help": "Trackers for the metrics, comma-separated: tensorboard, wandb, trackio or none."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar over iterations."})
    hub_model_id: str | None = field(
        default=None,
        metadata={
            "help": "Push the final actor to this Hub repository (user/name), with a model card of the run's "
            "held-out metrics (see `llmac export`); none: keep it local."
        },
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the Hub repository private."})

    # -- rollouts ----------------------------------------------------------------------------------
    prompts_per_iteration: int = field(
        default=32, metadata={"help": "Prompts sampled per iteration (over all processes)."}
    )
    samples_per_prompt: int = field(default=4, metadata={"help": "Completions per prompt (the group size)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass of the rollouts."})
    max_new_tokens: int = field(default=96, metadata={"help": "Tokens per completion at most."})
    async_rollouts: bool = field(
        default=False,
        metadata={
            "help": "Sample the next iteration's rollouts while this one scores and updates (one-step "
            "off-policy: they come from the weights before this update, and the PPO ratio is taken against "
            "the trainer's current weights). Hides generation behind training; an iteration that saves a "
            "checkpoint does not sample ahead, so resuming stays exact."
        },
    )
    max_prompt_length: int = field(
        default=256,
        metadata={"help": "Prompts with more tokens are skipped at load time (and counted in the log)."},
    )
    reward: str = field(
        default="math", metadata={"help": "Reward function: a registered name or 'package.module:function'."}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "Drop groups whose rewards are all equal (no signal for group advantages) and sample "
            "more prompts until the batch is full (ByteDance DAPO)."
        },
    )
    max_sampling_rounds: int = field(
        default=4,
        metadata={"help": "Dynamic sampling: rounds of prompts tried per iteration before training on less."},
    )
    overlong_buffer: int = field(
        default=0,
        metadata={
            "help": "Soft overlong shaping: completions within this many tokens of max_new_tokens get a "
            "linearly growing penalty down to -1 (0: off)."
        },
    )

    # -- advantages and rewards --------------------------------------------------------------------
    advantage_estimator: str = field(
        default="step_gae",
        metadata={
            "help": "step_gae (value read once per step, the step's advantage broadcast to its tokens), "
            "token_gae, or the critic-free grpo, rloo, lite_ppo (group mean, batch std)."
        },
    )
    gamma: float = field(default=1.0, metadata={"help": "GAE discount (per step for step_gae)."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_advantages: bool = field(
        default=True, metadata={"help": "GAE estimators: normalise advantages over the batch's tokens."}
    )
    process_reward_model: str | None = field(
        default=None,
        metadata={"help": "A step critic whose value at each step end is added as a process reward."},
    )
    process_reward_coef: float = field(default=1.0, metadata={"help": "Weight of the process reward."})

    # -- losses ------------------------------------------------------------------------------------
    old_logprobs: str = field(
        default="trainer",
        metadata={
            "help": "Log-probs the PPO ratio starts from: 'trainer' recomputes them with a forward pass of the "
            "actor before the updates; 'engine' takes the rollout engine's (one actor forward pass less per "
            "iteration; exact when the engine runs the trainer's weights in the same precision, and under "
            "async_rollouts the ratio then corrects for the stale sampler). Needs temperature 1 (engines "
            "report log-probs of the unscaled logits)."
        },
    )
    clip_low: float = field(default=0.2, metadata={"help": "PPO clip: ratio floor is 1 - clip_low."})
    clip_high: float = field(
        default=0.2, metadata={"help": "PPO clip: ratio ceiling is 1 + clip_high (0.28 is clip-higher)."}
    )
    loss_aggregation: str = field(
        default="token",
        metadata={
            "help": "'token': sum of token losses over the batch's tokens (DAPO, Lite PPO); 'sequence': "
            "mean over completions of each one's token mean (original GRPO)."
        },
    )
    kl_coef: float = field(
        default=0.0, metadata={"help": "Weight of the KL to the frozen reference (0: none)."}
    )
    kl_in: str = field(
        default="reward", metadata={"help": "Where the KL goes: 'reward' (per-token penalty) or 'loss'."}
    )
    kl_estimator: str = field(default="k1", metadata={"help": "KL estimator: k1, k2 or k3."})
    value_clip: float = field(
        default=0.2, metadata={"help": "Clip new values to old +- this in the value loss (0: no clipping)."}
    )
    value_coef: float = field(default=0.5, metadata={"help": "Weight of the value loss."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus weight."})
    value_warmup_iterations: int = field(
        default=0, metadata={"help": "First iterations that train only the value model."}
    )

    # -- optimisation ------------------------------------------------------------------------------
    ppo_epochs: int = field(default=1, metadata={"help": "Passes over each iteration's rollouts."})
    mini_batch_size: int = field(
        default=32, metadata={"help": "Completions per optimizer step on each process."}
    )
    micro_batch_size: int = field(
        default=32,
        metadata={
            "help": "Completions per forward pass. Passes take completions of similar length, each padded "
            "only to its own longest, so less compute goes to padding; a minibatch still makes one "
            "optimizer step. Lower it to save activation memory."
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Actor learning rate (AdamW)."})
    value_learning_rate: float = field(default=1e-4, metadata={"help": "Value model learning rate."})
    warmup_steps: int = field(
        default=10,
        metadata={
            "help": "Optimizer steps over which both learning rates rise linearly from 0 (Adam's first "
            "steps move every weight by about the full learning rate, whatever its gradient)."
        },
    )
    lr_scheduler_type: str = field(
        default="constant",
        metadata={
            "help": "Learning rates after the warm-up: constant, or linear / cosine decay to 0 at the last "
            "iteration. Decay suits an actor whose SFT annealed its rate to 0: raised again and held, "
            "the rate costs a small model accuracy that annealing back recovers."
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0: off)."})

    # -- value model -------------------------------------------------------------------------------
    value_model: str | None = field(
        default=None,
        metadata={
            "help": "Step critic to start the value model from (`llmac critic train` output); None builds "
            "one from the actor with a zero value head. Unused by critic-free estimators."
        },
    )
    value_activation: str = field(
        default="sigmoid",
        metadata={
            "help": "'sigmoid' (values in (0,1), as a step critic trained on success probabilities "
            "predicts) or 'identity' (unbounded, for rewards outside [0,1])."
        },
    )

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"PPOConfig: {message}")

        check(self.advantage_estimator in ADVANTAGE_ESTIMATORS,
              f"advantage_estimator must be one of {ADVANTAGE_ESTIMATORS}, got {self.advantage_estimator!r}")  # fmt: skip
        check(self.loss_aggregation in ("token", "sequence"),
              f"loss_aggregation must be 'token' or 'sequence', got {self.loss_aggregation!r}")  # fmt: skip
        check(self.kl_in in ("reward", "loss"), f"kl_in must be 'reward' or 'loss', got {self.kl_in!r}")
        check(self.old_logprobs in ("trainer", "engine"),
              f"old_logprobs must be 'trainer' or 'engine', got {self.old_logprobs!r}")  # fmt: skip
        check(self.old_logprobs == "trainer" or self.temperature == 1.0,
              "old_logprobs='engine' needs temperature 1.0: engines report log-probs of the unscaled logits")  # fmt: skip
        check(
            self.kl_estimator in ("k1", "k2", "k3"),
            f"kl_estimator must be k1, k2 or k3, got {self.kl_estimator!r}",
        )
        check(self.value_activation in ("sigmoid", "identity"),
              f"value_activation must be 'sigmoid' or 'identity', got {self.value_activation!r}")  # fmt: skip
        check(self.samples_per_prompt >= 1, "samples_per_prompt must be >= 1")
        check(self.samples_per_prompt >= 2 or self.advantage_estimator in VALUE_ESTIMATORS,
              f"{self.advantage_estimator} needs samples_per_prompt >= 2 (it compares a group's samples)")  # fmt: skip
        check(self.prompts_per_iteration >= 1 and self.mini_batch_size >= 1 and self.ppo_epochs >= 1
              and self.micro_batch_size >= 1,
              "prompts_per_iteration, mini_batch_size, micro_batch_size and ppo_epochs must be >= 1")  # fmt: skip
        check(0 <= self.clip_low < 1 and self.clip_high >= 0, "clip_low must be in [0, 1), clip_high >= 0")
        check(
            0 <= self.overlong_buffer <= self.max_new_tokens, "overlong_buffer must be in [0, max_new_tokens]"
        )
        check(self.max_sampling_rounds >= 1, "max_sampling_rounds must be >= 1")
        check(self.lr_scheduler_type in LR_SCHEDULES,
              f"lr_scheduler_type must be one of {LR_SCHEDULES}, got {self.lr_scheduler_type!r}")  # fmt: skip

    def optimizer_steps_per_iteration(self, num_processes: int = 1) -> int:
        """Optimizer steps one iteration makes: ``ppo_epochs`` passes over each process's share."""
        groups_per_process = math.ceil(self.prompts_per_iteration / num_processes)
        return self.ppo_epochs * math.ceil(
            groups_per_process * self.samples_per_prompt / self.mini_batch_size
        )

    @property
    def uses_value_model(self) -> bool:
        return self.advantage_estimator in VALUE_ESTIMATORS
