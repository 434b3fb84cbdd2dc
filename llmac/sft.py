"""``llmac sft``: warm-start an actor on step-by-step reference solutions with TRL's SFTTrainer.

Runs as plain ``llmac sft --config recipes/sft/<recipe>.yaml`` or under
``accelerate launch --config_file recipes/accelerate/<zero2|zero3>_cpu.yaml -m llmac sft ...``.
The loss covers solution tokens only (prompt-completion data); the saved model is a plain
safetensors checkpoint (LoRA merged) that the rollout engines load directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import SFTConfig, SFTTrainer

from llmac.config import ModelConfig, parse_config
from llmac.data.loading import DataError, format_prompt
from llmac.data.tasks import TaskConfig, load_task
from llmac.distributed import end_process_group
from llmac.errors import ConfigError
from llmac.models import (
    LoraSettings,
    build_tiny_model,
    load_actor,
    load_tokenizer,
    lora_config,
    tied_modules,
    train_tiny_tokenizer,
)
from llmac.outputs import OutputConfig, has_trainer_checkpoint, prepare_output, save_final_folder

logger = logging.getLogger(__name__)


def build_actor(model_config: ModelConfig, task_config: TaskConfig, seed: int = 0):
    """The starting actor and its tokenizer: a local/Hub checkpoint, or the tiny model built in memory.

    The tiny model is deterministic given the task text and seed, so every rank of a distributed run
    builds the same one without sharing files.
    """
    if model_config.model_name_or_path != "tiny":
        tokenizer = load_tokenizer(model_config.model_name_or_path)
        return load_actor(model_config.model_name_or_path, model_config.dtype), tokenizer
    rows = load_task(task_config, "train")
    tokenizer = train_tiny_tokenizer(list(rows["question"]) + list(rows["solution"] or []))
    return build_tiny_model(tokenizer, model_config.tiny_settings(seed)), tokenizer


def sft_dataset(rows: Dataset, tokenizer) -> Dataset:
    """Prompt-completion rows (TRL's format): templated prompt, reference solution as completion."""
    if "solution" not in rows.column_names:
        raise DataError("SFT needs reference solutions: the task's rows have no 'solution' column")
    missing = [i for i, s in enumerate(rows["solution"]) if not s]
    if missing:
        raise DataError(
            f"SFT data: {len(missing)} rows have an empty 'solution' (first: row {missing[0] + 1})"
        )
    return rows.map(
        lambda row: {"prompt": format_prompt(tokenizer, row["question"]), "completion": row["solution"]},
        remove_columns=rows.column_names,
    )


# What a `llmac sft` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, TaskConfig, SFTConfig, OutputConfig)


def run_sft(
    model_config: ModelConfig, task_config: TaskConfig, args: SFTConfig, overwrite: bool = False
) -> Path:
    """Train, save the final model (full weights) and tokenizer to ``args.output_dir``, return it.

    A rerun resumes from the output's newest checkpoint; ``overwrite`` starts afresh over an earlier
    llmac output, which stays whole until the new model replaces it (see :mod:`llmac.outputs`).
    """
    lora = model_config.lora_settings()
    if lora is not None and is_deepspeed_zero3_enabled():
        # merge_and_unload below needs whole weights; ZeRO-3 shards them.
        raise ConfigError("llmac sft: LoRA under DeepSpeed ZeRO-3 is not supported yet; use a ZeRO-2 config")
    output_dir = Path(args.output_dir)
    sources = [model_config.model_name_or_path, task_config.train_path, task_config.eval_path]
    work = prepare_output(output_dir, "sft", overwrite, sources, resumable=has_trainer_checkpoint)
    try:
        args.output_dir = str(work)  # checkpoints go there; the final model goes to output_dir
        return _train_and_save(model_config, task_config, args, lora, work, output_dir)
    finally:
        args.output_dir = str(output_dir)


def _train_and_save(
    model_config: ModelConfig,
    task_config: TaskConfig,
    args: SFTConfig,
    lora: LoraSettings | None,
    work: Path,
    output_dir: Path,
) -> Path:
    model, tokenizer = build_actor(model_config, task_config, seed=args.seed)
    # A tied model's embedding and head share one adapter (see lora_config).
    peft_config = lora_config(lora, tied_modules(model)) if lora is not None else None
    train_rows = sft_dataset(load_task(task_config, "train"), tokenizer)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_rows, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train(resume_from_checkpoint=has_trainer_checkpoint(work) or None)
    if peft_config is not None:
        trainer.model = trainer.model.merge_and_unload()
    main_process = trainer.is_world_process_zero()

    def save(folder: Path) -> None:
        args.output_dir = str(folder)  # what the Trainer pushes with push_to_hub
        trainer.save_model(str(folder))
        if main_process:
            tokenizer.save_pretrained(folder)

    save_final_folder(output_dir, "sft", save, main_process, trainer.accelerator.wait_for_everyone, work)
    if main_process:
        logger.info("saved SFT'd actor to %s", output_dir)
    return output_dir


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, task_config, args, output = parse_config(CONFIG_CLASSES, argv, prog="llmac sft")
    output_dir = run_sft(model_config, task_config, args, overwrite=output.overwrite)
    end_process_group()
    return output_dir


if __name__ == "__main__":
    main()
