"""PPO's objective on one minibatch, a pure function of the models' outputs and the scoring's targets:
clipped surrogate, entropy bonus, KL in the loss, clipped value loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmac.losses import aggregate, kl_penalty, masked_mean, policy_loss, value_loss
from llmac.ppo.config import PPOConfig
from llmac.rl.batch import TokenBatch
from llmac.rl.estimators import get_estimator
from llmac.rl.forward import TokenOutputs
from llmac.rl.targets import Targets


@dataclass
class Scores:
    """What scoring gives the updates, per row of the batch."""

    old_logprobs: torch.Tensor  # [B, T] the log-probs the PPO ratio starts from
    ref_logprobs: torch.Tensor | None  # [B, T] the frozen reference's (when there is a KL term)
    kl: torch.Tensor | None  # [B, T] per-token KL to the reference at the old log-probs
    targets: Targets

    def select(self, index: torch.Tensor) -> Scores:
        """The scores of the rows ``index``."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return Scores(
            pick(self.old_logprobs), pick(self.ref_logprobs), pick(self.kl), self.targets.select(index)
        )


def ppo_loss(
    outputs: TokenOutputs, scores: Scores, batch: TokenBatch, config: PPOConfig, policy_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss to minimise on ``batch`` (a minibatch) and its stats.

    ``policy_weight`` 0 (value warm-up) weights the policy term 0 instead of skipping it, so every process
    runs the same graph and DeepSpeed sees a gradient for every parameter. Entropy is in the stats
    always; it carries a gradient only when ``entropy_coef`` puts it in the loss.
    """
    mask, targets = batch.completion_mask, scores.targets
    loss_pg, pg = policy_loss(outputs.logprobs, scores.old_logprobs, targets.advantages, mask,
                              config.clip_low, config.clip_high, config.loss_aggregation)  # fmt: skip
    loss = policy_weight * loss_pg
    stats = {"policy_loss": loss_pg.item(), **{k: v.item() for k, v in pg.items()}}
    entropy = masked_mean(outputs.entropy, mask)
    if config.entropy_coef:
        loss = loss - config.entropy_coef * entropy
    stats["entropy"] = entropy.item()
    if config.kl_coef > 0 and config.kl_in == "loss":
        kl = kl_penalty(outputs.logprobs, scores.ref_logprobs, config.kl_estimator)
        loss = loss + config.kl_coef * aggregate(kl, mask, config.loss_aggregation)
    if outputs.values is not None:
        positions = getattr(batch, get_estimator(config.advantage_estimator).value_positions)
        loss_v, vs = value_loss(outputs.values.gather(1, positions), targets.old_values, targets.returns,
                                targets.value_mask, config.value_clip or None, config.loss_aggregation)  # fmt: skip
        loss = loss + config.value_coef * loss_v
        stats.update({"value_loss": loss_v.item(), **{k: v.item() for k, v in vs.items()}})
    return loss, stats
