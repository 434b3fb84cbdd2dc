"""One optimizer step of an RL update, the same in every pipeline."""

from __future__ import annotations

import torch


def apply_gradients(loss: torch.Tensor, accelerator, model: torch.nn.Module, optimizer, scheduler,
                    max_grad_norm: float) -> float:  # fmt: skip
    """Backward of ``loss``, gradient-norm clipping (DeepSpeed clips by its own config), one optimizer and
    schedule step. Returns the learning rate the step used (the first parameter group's)."""
    accelerator.backward(loss)
    learning_rate = scheduler.get_last_lr()[0]
    if max_grad_norm > 0 and accelerator.state.deepspeed_plugin is None:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return learning_rate
