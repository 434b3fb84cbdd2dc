"""Worker-side half of the vLLM weight sync: imported by vLLM's worker process, not by llmac users.

``LLM(worker_extension_cls="llmac.engines.vllm_worker.WeightSyncExtension")`` mixes this class into
the worker, so its methods run there through ``LLM.collective_rpc``. Weights arrive as safetensors
bytes in one or more chunks, are staged, and are loaded together by the worker's (model runner's)
``reload_weights``, which handles vLLM's fused layers (q/k/v, gate/up) and any post-load processing.
A fused layer must receive all its parts in one ``reload_weights`` call, which is why chunks are
staged rather than loaded one by one. This module imports only torch and safetensors.
"""

from __future__ import annotations

import safetensors.torch


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
        reload(weights_iterator=iter(staged))
        return len(staged)

    def llmac_discard_weights(self) -> None:
        """Drop staged tensors (after a failed transfer)."""
        self.__dict__.pop("_llmac_staged", None)
