"""Saving what an RL run trained: a plain ``from_pretrained`` folder, published whole."""

from __future__ import annotations

from pathlib import Path

import torch

from llmac.outputs import save_final_folder


def save_trained_model(model: torch.nn.Module, weights: dict[str, torch.Tensor] | None, tokenizer,
                       folder: str | Path, command: str, accelerator) -> None:  # fmt: skip
    """``model`` with ``weights`` (its full state dict, LoRA merged: a peft model's base model is saved)
    and ``tokenizer`` at ``folder``, staged and swapped in whole; every process calls it."""
    model = model.get_base_model() if hasattr(model, "disable_adapter") else model
    main, wait = accelerator.is_main_process, accelerator.wait_for_everyone

    def save(staging: Path) -> None:
        if main:
            model.save_pretrained(staging, state_dict=weights, safe_serialization=True)
            tokenizer.save_pretrained(staging)

    save_final_folder(folder, command, save, main, wait)
