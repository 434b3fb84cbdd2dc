"""A real 2-process DeepSpeed ZeRO-3 run of critic training under `accelerate launch` (gloo on CPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synthetic_labels import labelled_dataset
from transformers import AutoModelForTokenClassification, AutoTokenizer

from llmac.critic.data import IGNORE_INDEX, load_labelled_data, split_by_prompt
from llmac.critic.model import init_critic, load_critic_tokenizer
from llmac.critic.scoring import score_steps

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.distributed
def test_zero3_two_process_critic_training(tmp_path, tiny_actor_dir, arithmetic_rows):
    labelled = labelled_dataset(arithmetic_rows.select(range(128)))  # 256 solutions
    labelled.save_to_disk(str(tmp_path / "labels"))
    out = tmp_path / "critic"
    accelerate = Path(sys.executable).with_name("accelerate")
    # 25% of the prompts held out -> 192 training solutions; 30 steps x 8 x 2 processes = 2.5 epochs.
    cmd = [
        str(accelerate), "launch", "--config_file", "recipes/accelerate/zero3_cpu.yaml",
        "-m", "llmac.critic.training", "--config", "recipes/critic/tiny_arithmetic.yaml",
        "--init_from", str(tiny_actor_dir), "--train_data", str(tmp_path / "labels"), "--output_dir", str(out),
        "--eval_fraction", "0.25", "--eval_strategy", "no", "--max_steps", "30",
        "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--lr_scheduler_type", "constant",
        "--warmup_steps", "0", "--logging_steps", "1", "--save_steps", "30", "--disable_tqdm", "true",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert result.returncode == 0, result.stderr[-3000:]

    state = json.loads((out / "checkpoint-30" / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(30 * 8 * 2 / 192), "the run did not train on 2 processes"
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # the value head starts at zero on every rank
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1, losses
    metrics = json.loads((out / "eval_results.json").read_text())
    assert metrics["eval_step_auc"] > 0.8, metrics
    # Both processes' predictions were gathered: every held-out step counted once.
    data = load_labelled_data(
        tmp_path / "labels", load_critic_tokenizer(tiny_actor_dir), "\n", max_length=256
    )
    _, held_out = split_by_prompt(data, 0.25, seed=0)
    assert metrics["eval_num_steps"] == sum(y != IGNORE_INDEX for row in held_out["labels"] for y in row)

    # The saved critic is consolidated: full tensors equal to the fp32 weights DeepSpeed rebuilds from
    # the last checkpoint's shards (all float32 here, so the "16-bit" gather is exact).
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    saved = load_file(out / "model.safetensors")
    expected_shapes = {k: v.shape for k, v in init_critic(tiny_actor_dir).state_dict().items()}
    assert {k: v.shape for k, v in saved.items()} == expected_shapes
    from_shards = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoint-30"))
    assert saved.keys() == from_shards.keys()
    assert all(torch.equal(saved[k], from_shards[k].to(saved[k].dtype)) for k in saved)

    # It reloads with plain transformers and scores like a critic rebuilt from the shards.
    reloaded = AutoModelForTokenClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.padding_side == "right" and reloaded.config.num_labels == 1
    rebuilt = init_critic(tiny_actor_dir)
    rebuilt.load_state_dict(from_shards)
    rows = labelled.select(range(8))
    args = (list(rows["prompt"]), list(rows["completions"]), "\n")
    values = score_steps(reloaded, tokenizer, *args)
    reference = score_steps(rebuilt, tokenizer, *args)
    assert all(v == pytest.approx(r, abs=1e-5) for v, r in zip(values, reference, strict=True))
    assert len({round(v, 3) for row in values for v in row}) > 2  # trained: not one constant value
