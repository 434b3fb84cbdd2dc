"""Rollout engines: one protocol, a vLLM and a transformers implementation."""

from llmac.engines.base import BaseEngine, Completion, RolloutEngine, SamplingConfig

__all__ = ["BaseEngine", "Completion", "RolloutEngine", "SamplingConfig"]
