"""Datasets every pipeline consumes: rows with ``question``, ``answer`` and optional ``solution``."""

from llmac.data.arithmetic import ArithmeticTaskConfig, arithmetic_dataset, solve_chain

__all__ = ["ArithmeticTaskConfig", "arithmetic_dataset", "solve_chain"]
