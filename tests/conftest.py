"""Shared fixtures: a tiny actor trained for a few seconds on the arithmetic task, built locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GSM8K_DIR = SHARED / "data" / "gsm8k"


@pytest.fixture(scope="session")
def arithmetic_rows():
    from llmac.data import arithmetic_dataset

    return arithmetic_dataset(512, seed=1234)


@pytest.fixture(scope="session")
def tiny_actor_dir(tmp_path_factory, arithmetic_rows) -> Path:
    """Tokenizer + tiny Qwen2 (untied) warm-started 80 steps on arithmetic transcripts; safetensors."""
    from llmac.models import TinyModelConfig, warm_tiny_actor

    rows = arithmetic_rows
    out = tmp_path_factory.mktemp("tiny_actor")
    return warm_tiny_actor(rows["question"], rows["solution"], out, steps=80, config=TinyModelConfig(seed=0))


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not GSM8K_DIR.is_dir():
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR}")
    return GSM8K_DIR


@pytest.fixture(scope="session")
def vllm_engine(tiny_actor_dir):
    """One vLLM engine on the tiny actor for the whole session (it takes ~20 s to start on CPU)."""
    pytest.importorskip("vllm")
    from llmac.engines.vllm import VLLMEngine

    engine = VLLMEngine(tiny_actor_dir, dtype="float32", max_model_len=512, seed=0)
    yield engine
    engine.close()
