"""Worker-side half of the vLLM weight sync: imported by vLLM's worker process, not by llmac users.

``LLM(worker_extension_cls="llmac.engines.vllm_worker.WeightSyncExtension")`` mixes this class into
the worker, so its methods run there through ``LLM.collective_rpc``. Weights arrive as safetensors
bytes in one or more chunks, are staged, and are loaded together by the worker's (model runner's)
``reload_weights``, which handles vLLM's fused layers (q/k/v, gate/up) and any post-load processing.
A fused layer must receive all its parts in one ``reload_weights`` call, which is why chunks are
staged rather than loaded one by one. This module imports only torch and safetensors.

Importing it in the worker also shortens the worker's idle spin when ``LLMAC_VLLM_IDLE_SPIN_S`` is
set (see :func:`shorten_idle_spin`).
"""

from __future__ import annotations

import logging
import os

import safetensors.torch

IDLE_SPIN_ENV = "LLMAC_VLLM_IDLE_SPIN_S"

# vLLM's layer-wise reload warns "RotaryEmbedding: Failed to load weights" at every sync: rotary
# layers hold a computed cos/sin cache that no checkpoint carries, and vLLM puts it back as it was.
RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def _keep_record(record: logging.LogRecord) -> bool:
    return not (record.msg == "%s: Failed to load weights" and record.args == ("RotaryEmbedding",))


def _quiet_rotary_reload_notice() -> None:
    """Drop that one notice (once per worker); every other layer's failure is still logged."""
    logger = logging.getLogger(RELOAD_LOGGER)
    if _keep_record not in logger.filters:
        logger.addFilter(_keep_record)


def shorten_idle_spin(seconds: float) -> bool:
    """Make the worker busy-poll its message queue for at most ``seconds`` after a message.

    vLLM's worker spins on its shared-memory queue for a second after each message before it
    sleeps on a socket (``SpinCondition.busy_loop_s``). While generating, messages come every step,
    so a short spin costs nothing; after a ``generate`` call the full second takes most of a core
    from a trainer that shares the machine (on 2 CPU cores it slowed the next torch work by up to
    80%). Returns False when this vLLM has no such queue (nothing to shorten).
    """
    try:
        from vllm.distributed.device_communicators.shm_broadcast import SpinCondition
    except ImportError:
        return False
    original = getattr(SpinCondition, "wait", None)
    if original is None or not hasattr(SpinCondition, "record_read"):
        return False
    original = getattr(original, "__wrapped__", original)

    def wait(self, *args, **kwargs):
        if getattr(self, "busy_loop_s", 0) > seconds:
            self.busy_loop_s = seconds
        return original(self, *args, **kwargs)

    wait.__wrapped__ = original
    SpinCondition.wait = wait
    return True


if os.environ.get(IDLE_SPIN_ENV):
    shorten_idle_spin(float(os.environ[IDLE_SPIN_ENV]))


class WeightSyncExtension:
    """Methods added to the vLLM worker (``self`` is the worker; ``self.model_runner`` exists)."""

    def llmac_stage_weights(self, data: bytes) -> int:
        """Parse one safetensors chunk and keep its tensors until :meth:`llmac_commit_weights`."""
        staged = self.__dict__.setdefault("_llmac_staged", [])
        staged.extend(safetensors.torch.load(data).items())
        return len(staged)

    def llmac_commit_weights(self) -> int:
        """Load every staged tensor into the model in place; returns how many were loaded."""
        staged = self.__dict__.pop("_llmac_staged", [])
        if not staged:
            raise RuntimeError("llmac_commit_weights called with no staged weights")
        # The worker's own reload_weights sets vLLM's current config around the runner's; older
        # workers lack it.
        reload = getattr(self, "reload_weights", None) or self.model_runner.reload_weights
        _quiet_rotary_reload_notice()
        reload(weights_iterator=iter(staged))
        return len(staged)

    def llmac_discard_weights(self) -> None:
        """Drop staged tensors (after a failed transfer)."""
        self.__dict__.pop("_llmac_staged", None)
