"""Shared fixtures: a tiny actor trained for a few seconds on the arithmetic task, built locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GSM8K_DIR = SHARED / "data" / "gsm8k"


def _warm_start(
    model, tokenizer, texts: list[str], steps: int, batch_size: int = 32, lr: float = 3e-3
) -> None:
    """A few plain next-token steps so the model's distributions are peaked (not near-uniform)."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.fixture(scope="session")
def arithmetic_rows():
    from llmac.data import arithmetic_dataset

    return arithmetic_dataset(512, seed=1234)


@pytest.fixture(scope="session")
def tiny_actor_dir(tmp_path_factory, arithmetic_rows) -> Path:
    """Tokenizer + tiny Qwen2 (untied) warm-started ~80 steps on arithmetic text; saved with safetensors."""
    from llmac.models import TinyModelConfig, build_tiny_model, train_tiny_tokenizer

    out = tmp_path_factory.mktemp("tiny_actor")
    tokenizer = train_tiny_tokenizer(list(arithmetic_rows["question"]) + list(arithmetic_rows["solution"]))
    model = build_tiny_model(tokenizer, TinyModelConfig(seed=0))
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": s}], tokenize=False
        )
        for q, s in zip(arithmetic_rows["question"], arithmetic_rows["solution"], strict=True)
    ]
    _warm_start(model, tokenizer, texts, steps=80)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not GSM8K_DIR.is_dir():
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR}")
    return GSM8K_DIR
