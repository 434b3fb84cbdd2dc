"""Tied weights in a weight sync: an engine always receives both names of a tied matrix.

A model that ties its input embeddings and its output head (``tie_word_embeddings``: SmolLM2,
Qwen2.5) holds one matrix under two names, and what a sync sends may name it once: a tied model's
saved safetensors file leaves ``lm_head.weight`` out, and so may a stream of unique tensors or a
ZeRO-3 gather. vLLM's in-place reload rebuilds only the layers it is sent, and on CPU the head
computes with a copy its matmul kernel packed at load (vLLM's ``dispatch_cpu_unquantized_gemm``),
so a head left out stays stale even though its parameter is the embedding's: on the tiny tied model
the engine's log-probs were then 47-76 nats off the trainer's. Given the head, vLLM reloads it
correctly, so engines keep the model tied and :func:`complete_tied_weights` sends the head.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from llmac.engines.base import Weights
from llmac.errors import LlmacError

# What a causal LM of an architecture transformers does not map ties when its config says so.
DEFAULT_TIED = {"lm_head.weight": "model.embed_tokens.weight"}


def tied_weight_names(config) -> dict[str, str]:
    """``{name: the name it is tied to}`` of a causal LM's Hugging Face ``config``; {} when nothing is tied."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if not getattr(text_config, "tie_word_embeddings", False):
        return {}
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    keys = getattr(model_class, "_tied_weights_keys", None)
    return dict(keys) if isinstance(keys, Mapping) and keys else dict(DEFAULT_TIED)


def complete_tied_weights(weights: Weights, tied: Mapping[str, str]) -> Iterator[tuple[str, torch.Tensor]]:
    """The pairs of ``weights`` as they come, then the missing name of every half-sent tied pair.

    Raises :class:`~llmac.errors.LlmacError` when both names of a pair come with different values:
    the config (which every engine follows) says they are one matrix, so the trainer has been training
    an untied copy and no engine could run it.
    """
    items = weights.items() if isinstance(weights, Mapping) else weights
    partner = {**tied, **{source: name for name, source in tied.items()}}
    seen: dict[str, torch.Tensor] = {}
    for name, tensor in items:
        if name in partner:
            other = seen.get(partner[name])
            if other is not None and not torch.equal(other, tensor.to(other.device)):
                raise LlmacError(_untied_message(name, partner[name], tensor, other))
            seen[name] = tensor
        yield name, tensor
    for name, source in tied.items():
        if (name in seen) != (source in seen):
            yield (name, seen[source]) if source in seen else (source, seen[name])


def _untied_message(name: str, other_name: str, tensor: torch.Tensor, other: torch.Tensor) -> str:
    difference = (tensor.float() - other.to(tensor.device).float()).abs().max().item()
    return (
        f"weight sync: {name} differs from {other_name} (max |difference| {difference:.3g}) but the "
        "model's config ties them (tie_word_embeddings): training changed one without the other. "
        "Adapt both with one LoRA adapter (llmac does when lora_target_modules names either), or "
        "untie the checkpoint (tie_word_embeddings: false in its config.json, lm_head.weight saved)"
    )
