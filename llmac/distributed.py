"""One place for accelerate/DeepSpeed setup: gloo without CUDA, gathering weights under ZeRO-3.

DeepSpeed ZeRO-2/3 runs on CPU under ``accelerate launch`` only with the gloo backend (NCCL needs
CUDA and ccl is not installed), so every entry point asks this module instead of choosing itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

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
    if backend:
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
