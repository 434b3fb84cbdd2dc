"""`llmac sft` on one process: LoRA runs save a merged plain model; a rerun resumes from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from llmac.cli import main
from llmac.config import ModelConfig
from llmac.data.tasks import TaskConfig
from llmac.sft import build_actor

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sft" / "tiny_arithmetic.yaml"
TINY_RUN = [
    "--config", str(RECIPE), "--num_train", "96",
    "--per_device_train_batch_size", "8", "--warmup_steps", "0", "--logging_steps", "1",
]  # fmt: skip


def test_lora_sft_saves_a_merged_plain_checkpoint(tmp_path):
    out = tmp_path / "lora"
    main(["sft", *TINY_RUN, "--max_steps", "4", "--learning_rate", "1e-2", "--save_steps", "100",
          "--use_lora", "--lora_r", "4", "--lora_target_modules", "q_proj,v_proj", "--output_dir", str(out)])  # fmt: skip
    saved = load_file(out / "model.safetensors")
    assert not any("lora" in name for name in saved), "adapters must be merged into the weights"
    base = build_actor(ModelConfig(), TaskConfig(num_train=96), seed=0)[0].state_dict()
    assert saved.keys() == base.keys()
    changed = [k for k in base if not torch.equal(base[k], saved[k])]
    # only the adapted layers moved (a comma-separated target list is a list of names, not one regex)
    assert {k.rsplit(".", 2)[-2] for k in changed} == {"q_proj", "v_proj"}
    assert torch.equal(base["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])


def test_rerun_resumes_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "resume"
    main(["sft", *TINY_RUN, "--max_steps", "4", "--save_steps", "4", "--output_dir", str(out)])
    first = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    # A rerun asking for more steps, with another learning rate: a fresh run would log other
    # learning rates and losses for steps 1-4; a resumed one keeps them and trains steps 5-6 only.
    main(["sft", *TINY_RUN, "--max_steps", "6", "--save_steps", "2", "--learning_rate", "5e-3",
          "--output_dir", str(out)])  # fmt: skip
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    resumed = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[:4] == [h for h in first if "loss" in h]
