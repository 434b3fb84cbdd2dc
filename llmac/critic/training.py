"""``llmac critic train``: fit a step critic to MC step labels with the Hugging Face Trainer.

Data are labelled solutions in the Math-Shepherd / TRL PRM layout, read and encoded by
:mod:`llmac.critic.data` at exactly the positions scoring reads (a target at every step end, ``-100``
elsewhere). The loss is binary cross-entropy on the value logit at step ends (soft labels:
``-m log v - (1 - m) log(1 - v)``).

Runs as ``llmac critic train --config recipes/critic/<recipe>.yaml`` or under
``accelerate launch --config_file recipes/accelerate/<zero2|zero3>_cpu.yaml -m llmac.critic.training ...``.
Resumes from the newest checkpoint in ``output_dir``; the final critic is a plain safetensors
``AutoModelForTokenClassification`` checkpoint (LoRA merged, consolidated under ZeRO-3).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoConfig, EvalPrediction, PreTrainedModel, Trainer, TrainingArguments
from transformers.integrations import is_deepspeed_zero3_enabled

from llmac.config import ModelConfig, option, parse_config
from llmac.critic.data import (
    IGNORE_INDEX,
    CriticCollator,
    EncodedData,
    load_labelled_data,
    split_by_prompt,
)
from llmac.critic.metrics import roc_auc
from llmac.critic.model import critic_delimiter, init_critic, load_critic, load_critic_tokenizer
from llmac.distributed import end_process_group
from llmac.errors import ConfigError
from llmac.models import lora_config
from llmac.outputs import OutputConfig, has_trainer_checkpoint, prepare_output, save_final_folder
from llmac.paths import check_model_path
from llmac.steps import DEFAULT_DELIMITER
from llmac.validation import check_fields, require

logger = logging.getLogger(__name__)

LABEL_TYPES = ("soft", "hard")


# ---------------------------------------------------------------------------------------------- configs


@dataclass
class CriticConfig(TrainingArguments):
    """Trainer settings of ``llmac critic train``: every ``TrainingArguments`` field plus the ones below.

    Defaults that differ from ``TrainingArguments``: ``remove_unused_columns=False`` (the encoded rows
    hold exactly what the collator needs) and ``label_names=["labels"]``.
    """

    label_type: str = option(
        "soft",
        "'soft': BCE against the MC soft labels m (-m log v - (1-m) log(1-v)); 'hard': BCE against "
        "the 0/1 hard labels (PRM style).",
        choices=LABEL_TYPES,
    )
    last_step_only: bool = option(
        False, "Supervise only each solution's final step (an outcome value model)."
    )
    max_length: int | None = option(
        1024,
        "Truncate question + solution to this many tokens; steps ending past it are dropped from "
        "the loss (and counted in the log). None: no truncation.",
        range="[2, inf)",
    )
    eval_fraction: float = option(
        0.05,
        "Fraction of the training prompts held out for evaluation when no eval_data is given "
        "(all solutions of a prompt go to the same side). 0 disables evaluation.",
        range="[0, 1)",
    )
    remove_unused_columns: bool = option(
        False, "Keep dataset columns the model's forward does not name (the collator reads them)."
    )

    def __post_init__(self) -> None:
        check_fields(self)  # llmac's fields; TrainingArguments checks its own below
        if self.label_names is None:
            self.label_names = ["labels"]
        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns
        super().__post_init__()


@dataclass
class CriticDataConfig:
    """Where the critic starts from and which labelled solutions it learns from."""

    init_from: str = option(
        help="An actor checkpoint folder (a causal LM: the critic gets its backbone and a new zero "
        "value head) or an existing critic folder (training continues from it)."
    )
    train_data: str = option(
        help="Labelled solutions: a folder saved with Dataset.save_to_disk, or a .jsonl / .parquet file, "
        "with columns prompt, completions (list of clean steps), labels (soft, in [0, 1]) and hard_labels "
        "(0/1; required for label_type 'hard')."
    )
    eval_data: str | None = option(
        None, "Held-out labelled solutions, same layout. None: hold out eval_fraction of train_data."
    )
    extra_layers: int = option(
        0,
        "Starting from an actor: decoder layers added on top of its backbone, initialised as the "
        "identity. A critic no deeper than the actor cannot compare the actor's next-token prediction "
        "with the token written; one or two more layers can.",
        range="[0, inf)",
    )
    delimiter: str | None = option(
        None,
        "Step delimiter joining the clean steps. None: the critic's own when continuing one, "
        f"else {DEFAULT_DELIMITER!r}.",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, self.delimiter is None or bool(self.delimiter), "delimiter must be non-empty (or None)")


# ---------------------------------------------------------------------------------------------- loss


def masked_bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items: torch.Tensor | int | None = None
) -> torch.Tensor:
    """BCE-with-logits at positions whose label is not -100, summed and divided by ``num_items``.

    ``num_items`` defaults to the number of such positions (a mean); the Trainer passes the count over
    the whole accumulated (and all-process) batch so every step weighs the same.
    """
    mask = labels != IGNORE_INDEX
    count = mask.sum() if num_items is None else num_items
    if int(mask.sum()) == 0:
        return logits.sum() * 0.0  # keeps the graph: every process must run backward
    total = F.binary_cross_entropy_with_logits(logits[mask].float(), labels[mask].float(), reduction="sum")
    return total / count


def critic_loss(
    outputs, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor:
    """The Trainer's ``compute_loss_func``: masked BCE on the value logit ``logits[..., 0]``."""
    return masked_bce_loss(outputs.logits[..., 0], labels, num_items_in_batch)


def value_logits_for_metrics(logits: torch.Tensor | tuple, labels: torch.Tensor) -> torch.Tensor:
    """Keep only the value logit per token for evaluation (the Trainer's ``preprocess_logits_for_metrics``)."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    return logits[..., 0].float()


def step_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """Step AUC (targets thresholded at 0.5), BCE and mean absolute error over all supervised steps."""
    logits = np.asarray(eval_pred.predictions, dtype=np.float64)
    labels = np.asarray(eval_pred.label_ids, dtype=np.float64)
    mask = labels != IGNORE_INDEX
    z, y = logits[mask], labels[mask]
    values = 1.0 / (1.0 + np.exp(-z))
    positive = y >= 0.5
    # AUC on logits: sigmoid saturates to exact ties in float precision, logits keep the ranking.
    auc = roc_auc(z, positive) if positive.any() and not positive.all() else float("nan")
    return {
        "step_auc": auc,
        "bce": float(np.mean(np.logaddexp(0.0, z) - y * z)),
        "mae": float(np.mean(np.abs(values - y))),
        "num_steps": int(mask.sum()),
    }


# ---------------------------------------------------------------------------------------------- model


def check_init_from(init_from: str | Path) -> None:
    """Refuse, offline and at once, an ``init_from`` that cannot be a model: 'tiny' or a missing folder."""
    if str(init_from) == "tiny":  # an actor is built from a task's text; a critic needs a trained one
        raise ConfigError(
            "init_from='tiny': a critic starts from a saved actor folder (its backbone; e.g. runs/demo/sft "
            "or `llmac sft --model_name_or_path tiny` output) or from a critic folder to continue"
        )
    check_model_path(init_from, flag="init_from")


def start_critic(
    init_from: str | Path, delimiter: str | None, dtype: str = "float32", extra_layers: int = 0
) -> tuple[PreTrainedModel, str]:
    """``(critic, delimiter)``: a new critic on an actor's backbone, or an existing critic to continue."""
    check_init_from(init_from)
    config = AutoConfig.from_pretrained(str(init_from))
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForTokenClassification") for a in architectures):
        model = load_critic(init_from, dtype)  # raises for token classifiers that are not critics
        own = critic_delimiter(model)
        if delimiter is not None and delimiter != own:
            raise ConfigError(
                f"{init_from} is a critic trained with step delimiter {own!r}, but delimiter={delimiter!r} was "
                "given; continue with its own delimiter (leave delimiter unset) or start from an actor"
            )
        return model, own
    if any(a.endswith("ForCausalLM") for a in architectures):
        delimiter = DEFAULT_DELIMITER if delimiter is None else delimiter
        model = init_critic(init_from, delimiter, dtype, extra_layers)
        return model, delimiter
    raise ConfigError(
        f"{init_from}: architectures {architectures} are neither a causal LM (an actor to start a critic "
        "from) nor a token classifier (a critic to continue)"
    )


def critic_lora_config(model_config: ModelConfig):
    """The peft LoRA config for a critic: token classification, the value head trained in full."""
    settings = model_config.lora_settings()
    if settings is None:
        return None
    config = lora_config(settings)
    config.task_type = "TOKEN_CLS"
    config.modules_to_save = ["score"]
    return config


def check_saved_weights(output_dir: str | Path) -> None:
    """Raise if the saved critic has no safetensors weights or an empty tensor (an unconsolidated ZeRO-3 save)."""
    from safetensors import safe_open

    files = sorted(Path(output_dir).glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"{output_dir}: no safetensors weights were saved")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            empty = [k for k in f.keys() if 0 in f.get_slice(k).get_shape()]  # noqa: SIM118 (not iterable)
        if empty:
            raise RuntimeError(
                f"{file}: {len(empty)} empty tensors (e.g. {empty[0]}): ZeRO-3 weights were not gathered; set "
                "stage3_gather_16bit_weights_on_model_save in the DeepSpeed config"
            )


# ---------------------------------------------------------------------------------------------- training


def build_trainer(
    model, tokenizer, args: CriticConfig, train_dataset: Dataset, eval_dataset: Dataset | None = None
) -> Trainer:
    """A plain ``Trainer`` with the critic's collator, loss and evaluation metrics."""
    return Trainer(
        model=model,
        args=args,
        data_collator=CriticCollator(tokenizer.pad_token_id),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_loss_func=critic_loss,
        compute_metrics=step_metrics if eval_dataset is not None else None,
        preprocess_logits_for_metrics=value_logits_for_metrics if eval_dataset is not None else None,
    )


def training_data(
    data_config: CriticDataConfig, tokenizer, delimiter: str, args: CriticConfig
) -> tuple[Dataset, Dataset | None]:
    """The encoded train and eval datasets (eval: eval_data, a held-out share of prompts, or None)."""

    def load(path: str) -> EncodedData:
        data = load_labelled_data(
            path, tokenizer, delimiter, args.label_type, args.max_length, args.last_step_only
        )
        (logger.warning if data.dropped_steps else logger.info)("critic data %s: %s", path, data.summary())
        return data

    train = load(data_config.train_data)
    if data_config.eval_data is not None:
        return train.dataset, load(data_config.eval_data).dataset
    if args.eval_fraction > 0:
        return split_by_prompt(train, args.eval_fraction, args.seed)
    return train.dataset, None


def train_critic(
    model_config: ModelConfig, data_config: CriticDataConfig, args: CriticConfig, overwrite: bool = False
) -> Trainer:
    """Train (resuming from ``args.output_dir``'s newest checkpoint), evaluate, save the final critic.

    The saved critic (full weights, LoRA merged, tokenizer right-padded) loads with plain
    ``AutoModelForTokenClassification.from_pretrained``. Returns the trainer, whose ``model`` is the
    trained critic. ``overwrite`` starts afresh over an earlier llmac output (see :mod:`llmac.outputs`).
    """
    check_init_from(data_config.init_from)
    if model_config.model_name_or_path not in ("tiny", data_config.init_from):
        raise ConfigError(
            f"llmac critic train starts from init_from ({data_config.init_from!r}); model_name_or_path "
            f"({model_config.model_name_or_path!r}) is not used, leave it unset"
        )
    peft_config = critic_lora_config(model_config)
    if peft_config is not None and is_deepspeed_zero3_enabled():
        # merge_and_unload below needs whole weights; ZeRO-3 shards them.
        raise ConfigError(
            "llmac critic train: LoRA under DeepSpeed ZeRO-3 is not supported yet; use a ZeRO-2 config"
        )
    output_dir = Path(args.output_dir)
    sources = [data_config.init_from, data_config.train_data, data_config.eval_data]
    work = prepare_output(output_dir, "critic train", overwrite, sources, resumable=has_trainer_checkpoint)
    args.output_dir = str(work)  # checkpoints and eval results go there; the critic to output_dir
    tokenizer = load_critic_tokenizer(data_config.init_from)
    model, delimiter = start_critic(
        data_config.init_from, data_config.delimiter, model_config.dtype, data_config.extra_layers
    )
    train_dataset, eval_dataset = training_data(data_config, tokenizer, delimiter, args)
    if eval_dataset is None and args.eval_strategy != "no":
        raise ConfigError(
            f"eval_strategy={args.eval_strategy!r} needs evaluation data: give eval_data or eval_fraction > 0"
        )
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)
    trainer = build_trainer(model, tokenizer, args, train_dataset, eval_dataset)
    trainer.train(resume_from_checkpoint=has_trainer_checkpoint(work) or None)
    if eval_dataset is not None:
        final_eval(trainer)
    save_critic(trainer, output_dir, work)
    args.output_dir = str(output_dir)
    return trainer


def final_eval(trainer: Trainer) -> dict[str, float]:
    """Evaluation metrics of the trained critic (reused when training ended with an evaluation), also
    written to ``output_dir/eval_results.json``."""
    history = trainer.state.log_history
    last = next((h for h in reversed(history) if "eval_loss" in h), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        metrics = {k: v for k, v in last.items() if k != "step"}
    else:
        metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    return metrics


def save_critic(trainer: Trainer, output_dir: Path, work: Path | None = None) -> None:
    """Save the trained critic and its tokenizer; every process must call it (ZeRO-3 gathers weights).

    The critic is written beside ``output_dir`` and swapped in whole (:func:`llmac.outputs.save_final_folder`),
    with the checkpoints and results the run kept in ``work``.
    """
    from peft import PeftModel

    main_process = trainer.is_world_process_zero()
    merged = isinstance(trainer.model, PeftModel)
    if merged:
        # Not under ZeRO-3 (refused above), so every process holds whole weights: merge and save directly.
        trainer.model = trainer.model.merge_and_unload()

    def save(folder: Path) -> None:
        if not merged:
            trainer.args.output_dir = str(folder)  # what the Trainer pushes with push_to_hub
            trainer.save_model(str(folder))  # ZeRO-3: gathered (stage3_gather_16bit_weights_on_model_save)
        elif main_process:
            trainer.model.save_pretrained(folder, safe_serialization=True)
            trainer.processing_class.save_pretrained(folder)
        if main_process:
            check_saved_weights(folder)

    wait = trainer.accelerator.wait_for_everyone
    save_final_folder(output_dir, "critic train", save, main_process, wait, work)
    if main_process:
        logger.info("saved step critic to %s", output_dir)


# What a `llmac critic train` recipe fills, in order.
CONFIG_CLASSES = (ModelConfig, CriticDataConfig, CriticConfig, OutputConfig)


def run_critic_training(
    model_config: ModelConfig, data_config: CriticDataConfig, args: CriticConfig, overwrite: bool = False
) -> Path:
    """Train and save the critic (see :func:`train_critic`); returns ``args.output_dir``."""
    train_critic(model_config, data_config, args, overwrite)
    return Path(args.output_dir)


def main(argv: Sequence[str] | None = None) -> Path:
    model_config, data_config, args, output = parse_config(CONFIG_CLASSES, argv, prog="llmac critic train")
    output_dir = run_critic_training(model_config, data_config, args, output.overwrite)
    end_process_group()
    return output_dir


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    main()
