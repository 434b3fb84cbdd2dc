"""Config plumbing shared by every subcommand: YAML recipe + CLI flag overrides (TRL's TrlParser)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import MISSING, Field, dataclass, field
from functools import partial
from types import MappingProxyType

from llmac.errors import ConfigError, LlmacError
from llmac.validation import CHOICES, RANGE, check_fields, require_multiple

logger = logging.getLogger(__name__)


def option(
    default=MISSING,
    help: str | None = None,
    *,
    range: str | None = None,
    choices: Sequence | None = None,
    factory=MISSING,
) -> Field:
    """A documented config field: ``field(default=..., metadata={"help": ..., "range": ..., "choices": ...})``
    with the metadata keys given (``range``/``choices``: see :mod:`llmac.validation`). ``factory`` is the
    ``default_factory`` of a mutable default; with neither default nor factory the field is required."""
    given = {"help": help, RANGE: range, CHOICES: choices}
    metadata = {key: value for key, value in given.items() if value is not None}
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass
class ModelConfig:
    """The actor to start from."""

    model_name_or_path: str = option(
        "tiny",
        "A local folder or Hub id loaded with from_pretrained, or 'tiny' to build the CPU "
        "demo's tiny Qwen2 (character-level tokenizer trained on the task's text).",
    )
    dtype: str = option(
        "float32",
        "float32, bfloat16, float16, or auto (the checkpoint's).",
        choices=("float32", "bfloat16", "float16", "auto"),
    )
    use_lora: bool = option(False, "Train LoRA adapters instead of all weights.")
    lora_r: int = option(16, "LoRA rank.", range="[1, inf)")
    lora_alpha: int = option(32, "LoRA alpha.", range="[1, inf)")
    lora_dropout: float = option(0.0, "LoRA dropout.", range="[0, 1)")
    lora_target_modules: str = option(
        "all-linear", "LoRA target modules: 'all-linear' or comma-separated names."
    )
    tiny_hidden_size: int = option(128, "model=tiny: width.", range="[1, inf)")
    tiny_num_layers: int = option(2, "model=tiny: layers.", range="[1, inf)")
    tiny_num_heads: int = option(4, "model=tiny: attention heads.", range="[1, inf)")
    tiny_intermediate_size: int = option(512, "model=tiny: MLP width.", range="[1, inf)")

    def __post_init__(self) -> None:
        check_fields(self)
        require_multiple(self, "tiny_hidden_size", of="tiny_num_heads")

    def lora_settings(self):
        from llmac.models import LoraSettings

        if not self.use_lora:
            return None
        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
        )

    def tiny_settings(self, seed: int = 0):
        from llmac.models import TinyModelConfig

        return TinyModelConfig(
            hidden_size=self.tiny_hidden_size,
            num_layers=self.tiny_num_layers,
            num_heads=self.tiny_num_heads,
            intermediate_size=self.tiny_intermediate_size,
            seed=seed,
        )


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None, prog: str | None = None):
    """Instances of ``dataclass_types`` from ``--config recipe.yaml`` and ``--field value`` overrides.

    Trainer arguments get the process-group backend this machine needs (gloo without CUDA) as their
    default: it must be known when they are built, since DeepSpeed's batch sizes are derived then.
    """
    from transformers import TrainingArguments

    from llmac.distributed import trainer_kwargs

    parser = _parser_class()(list(dataclass_types), prog=prog)
    parser.error = partial(_refuse, prog or "llmac")  # argparse would print its usage and exit 2
    if any(issubclass(t, TrainingArguments) for t in dataclass_types):
        parser.set_defaults(**trainer_kwargs(), **_cpu_precision_defaults(dataclass_types, argv))
    try:
        return tuple(_expand_home(config) for config in parser.parse_args_and_config(args=argv))
    except LlmacError:
        raise
    except ValueError as error:  # a field's own check (__post_init__), an unknown field
        message = str(error)
        if message.startswith("Some specified arguments are not used"):
            message = f"unknown field(s) {message.partition(': ')[2]}"
        _refuse(prog or "llmac", message)


def _expand_home(config):
    """``config`` with ``~/...`` paths expanded: a shell does it for flags, nothing does it for YAML."""
    for name in (f.name for f in dataclasses.fields(config)):
        value = getattr(config, name)
        if isinstance(value, str) and value.startswith("~/"):
            object.__setattr__(config, name, os.path.expanduser(value))
    return config


def _refuse(prog: str, message: str) -> None:
    raise ConfigError(f"{prog}: {message} (`{prog} --help` lists the fields and their values)")


def _cpu_precision_defaults(dataclass_types: Sequence[type], argv: Sequence[str] | None) -> dict:
    """``bf16=False`` for trainer configs whose own default turns it on (TRL's), when no accelerator
    is present: bf16 mixed precision needs a GPU, and TRL's default fails on CPU."""
    import torch

    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    turns_on = any(
        f.name == "bf16" and f.default is None for t in dataclass_types for f in dataclasses.fields(t)
    )
    if accelerated or not turns_on:
        return {}
    if not any(arg.partition("=")[0] == "--bf16" for arg in argv or ()):
        logger.info("no GPU found: training in float32 (bf16=False; pass --bf16 true to override)")
    return {"bf16": False}


def _parser_class():
    """TrlParser that keeps llmac's ``range`` metadata out of argparse and shows it in the help instead."""
    from transformers import HfArgumentParser
    from trl import TrlParser

    from llmac.validation import RANGE

    class ConfigParser(TrlParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            if RANGE in field.metadata:
                metadata = dict(field.metadata)
                spec = metadata.pop(RANGE)
                metadata["help"] = f"{metadata.get('help', '')} Range: {spec}.".lstrip()
                field = copy.copy(field)
                field.metadata = MappingProxyType(metadata)
            HfArgumentParser._parse_dataclass_field(parser, field)

    return ConfigParser
