"""One place for accelerate/DeepSpeed setup: gloo without CUDA, gathering weights under ZeRO-3.

DeepSpeed ZeRO-2/3 runs on CPU under ``accelerate launch`` only with the gloo backend (NCCL needs
CUDA and ccl is not installed), so every entry point asks this module instead of choosing itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import nullcontext

import torch


def has_cuda() -> bool:
    return torch.cuda.is_available()


def process_group_backend() -> str | None:
    """The torch.distributed backend to use: gloo without CUDA, otherwise accelerate's default."""
    return None if has_cuda() else "gloo"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def trainer_kwargs() -> dict:
    """Extra ``TrainingArguments`` fields a HF/TRL Trainer needs to run here (gloo on CPU).

    Only for multi-process runs: a single process given a backend expects a process group.
    """
    backend = process_group_backend()
    return {"ddp_backend": backend} if backend and world_size() > 1 else {}


def make_accelerator(**kwargs):
    """An ``Accelerator`` whose process group uses gloo when there is no CUDA (own training loops)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    backend = process_group_backend()
    handlers = list(kwargs.pop("kwargs_handlers", []))
    if backend and world_size() > 1:  # a single process given a backend expects a process group
        handlers.append(InitProcessGroupKwargs(backend=backend))
    return Accelerator(kwargs_handlers=handlers, **kwargs)


def is_deepspeed_zero3(accelerator) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def gathered_state_dict(model, accelerator) -> Mapping[str, torch.Tensor]:
    """Full (unsharded) state dict of a prepared model; under ZeRO-3 parameters are gathered.

    Every rank must call it; only the main process receives the full dict.
    """
    return accelerator.get_state_dict(model)


def configure_deepspeed(accelerator, micro_batch_size: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed fields an own training loop cannot leave on "auto" (there is no dataloader
    for accelerate to read them from): one optimizer step per micro-batch, and gradient clipping,
    which DeepSpeed applies itself (accelerate's ``clip_grad_norm_`` is a no-op under DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = micro_batch_size * accelerator.num_processes
    config["gradient_clipping"] = max_grad_norm if max_grad_norm > 0 else 0.0


def prepare_frozen_model(model: torch.nn.Module, accelerator) -> torch.nn.Module:
    """A model that is only run forward (reference policy, reward model) placed like the trained one:
    sharded by a DeepSpeed inference engine under ZeRO-3, else whole on this process's device."""
    model.requires_grad_(False).eval()
    if not is_deepspeed_zero3(accelerator):
        return model.to(accelerator.device)
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine


def full_state_dict(
    module: torch.nn.Module, accelerator, state_dict_fn: Callable[[torch.nn.Module], Mapping] | None = None
) -> dict[str, torch.Tensor] | None:
    """``module``'s whole state dict on the main process (None elsewhere); every process must call it.

    Under ZeRO-3 the parameters are gathered for the copy and re-sharded right after.
    ``state_dict_fn`` replaces ``module.state_dict()`` (e.g. to merge LoRA adapters into the weights).
    """
    read = state_dict_fn or (lambda m: m.state_dict())
    gather = nullcontext()
    if is_deepspeed_zero3(accelerator):
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gather:
        if accelerator.is_main_process:
            return {k: v.detach().clone() for k, v in read(module).items()}
    return None


def end_process_group() -> None:
    """Wait for every process, then tear the process group down (no-op in a single process).

    Without it a rank that finishes first exits while gloo's threads still run, and the C++ runtime
    aborts it ("terminate called without an active exception"), failing an otherwise good run.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def reset_hf_deepspeed_config() -> None:
    """Forget a ZeRO-3 config transformers registered, so a saved model reloads as a plain model."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
