"""One place for accelerate/DeepSpeed setup: gloo without CUDA, gathering weights under ZeRO-3.

DeepSpeed ZeRO-2/3 runs on CPU under ``accelerate launch`` only with the gloo backend (NCCL needs
CUDA and ccl is not installed), so every entry point asks this module instead of choosing itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import torch

from llmac.models import WeightUnit, plain_weight_units


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


def stream_weights(units: Iterable[WeightUnit], accelerator) -> Iterator[tuple[str, torch.Tensor]]:
    """Every unit's tensors as CPU copies, one unit gathered at a time under ZeRO-3.

    Only the main process receives pairs, but every process must run the iterator to its end: each
    unit's gather is a collective. A unit is re-sharded before its tensors are handed out, so the
    full model is never gathered at once (a consumer can send each piece on while the next is gathered).
    """
    zero3 = is_deepspeed_zero3(accelerator)
    for module, read in units:
        gather = nullcontext()
        if zero3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
        with gather:
            pairs = (
                [(k, v.to("cpu", copy=True)) for k, v in read().items()]
                if accelerator.is_main_process
                else []
            )
        yield from pairs


def full_state_dict(module: torch.nn.Module, accelerator) -> dict[str, torch.Tensor] | None:
    """``module``'s plain weights (LoRA merged) on the main process, None elsewhere; every process must call it."""
    weights = dict(stream_weights(plain_weight_units(module), accelerator))
    return weights if accelerator.is_main_process else None


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


def sum_over_processes(value: torch.Tensor, accelerator) -> torch.Tensor:
    """``value`` summed over every process (itself in a single process); every process must call it."""
    if accelerator.num_processes == 1:
        return value
    return accelerator.reduce(value, reduction="sum")


def mean_over_processes(metrics: dict[str, float], accelerator) -> dict[str, float]:
    """Metrics over every process: the maximum for ``*_max`` keys, the mean for the others.

    Every process must call it with the same keys.
    """
    if accelerator.num_processes == 1 or not metrics:
        return metrics
    import torch.distributed as dist

    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    peaks = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    means = (values / accelerator.num_processes).tolist()
    return {k: (p if k.endswith("_max") else m) for k, m, p in zip(keys, means, peaks.tolist(), strict=True)}
