"""A real 2-process DeepSpeed ZeRO-2 run of `llmac sft` under `accelerate launch` (gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmac.config import ModelConfig
from llmac.data.tasks import TaskConfig
from llmac.sft import build_actor

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.distributed
def test_zero2_two_process_sft(tmp_path):
    out = tmp_path / "sft"
    accelerate = Path(sys.executable).with_name("accelerate")
    # 160 problems, 8 per process: after 5 steps 2 processes have seen half an epoch (1 would see a quarter).
    cmd = [
        str(accelerate), "launch", "--config_file", "recipes/accelerate/zero2_cpu.yaml",
        "-m", "llmac", "sft", "--config", "recipes/sft/tiny_arithmetic.yaml",
        "--num_train", "160", "--per_device_train_batch_size", "8", "--max_steps", "5",
        "--warmup_steps", "0", "--learning_rate", "3e-3", "--logging_steps", "1",
        "--save_steps", "5", "--output_dir", str(out),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-3000:]

    state = json.loads((out / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(0.5), "the run did not train on 2 processes"
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 5
    assert losses[-1] < losses[0] - 0.1, losses

    trained = AutoModelForCausalLM.from_pretrained(out)
    initial, _ = build_actor(ModelConfig(), TaskConfig(num_train=160), seed=0)
    initial_sd, trained_sd = initial.state_dict(), trained.state_dict()
    assert initial_sd.keys() == trained_sd.keys()
    assert any(not torch.equal(initial_sd[k], trained_sd[k]) for k in initial_sd), "weights did not change"


@pytest.mark.distributed
def test_lora_under_zero3_is_refused_with_a_clear_error(tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate), "launch", "--config_file", "recipes/accelerate/zero3_cpu.yaml",
        "-m", "llmac", "sft", "--config", "recipes/sft/tiny_arithmetic.yaml", "--num_train", "64",
        "--max_steps", "2", "--use_lora", "--output_dir", str(tmp_path / "sft"),
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert result.returncode != 0
    assert "LoRA under DeepSpeed ZeRO-3 is not supported yet" in result.stderr
    assert not (tmp_path / "sft").exists()  # refused before any work
