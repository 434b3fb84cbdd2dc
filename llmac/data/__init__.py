"""Datasets every pipeline consumes: rows with ``question``, ``answer`` and optional ``solution``."""

from llmac.data.arithmetic import ArithmeticTaskConfig, arithmetic_dataset, solve_chain
from llmac.data.gsm8k import MODEL_SOLUTION_SOURCES, load_gsm8k, load_gsm8k_model_solutions
from llmac.data.loading import (
    DataError,
    PromptDataConfig,
    build_prompts,
    format_prompt,
    load_prompts,
    load_records,
)
from llmac.data.tasks import TaskConfig, load_task

__all__ = [
    "MODEL_SOLUTION_SOURCES",
    "ArithmeticTaskConfig",
    "DataError",
    "PromptDataConfig",
    "TaskConfig",
    "arithmetic_dataset",
    "build_prompts",
    "format_prompt",
    "load_gsm8k",
    "load_gsm8k_model_solutions",
    "load_prompts",
    "load_records",
    "load_task",
    "solve_chain",
]
