"""Config plumbing shared by every subcommand: YAML recipe + CLI flag overrides (TRL's TrlParser)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    """The actor to start from."""

    model_name_or_path: str = field(
        default="tiny",
        metadata={
            "help": "A local folder or Hub id loaded with from_pretrained, or 'tiny' to build the CPU "
            "demo's tiny Qwen2 (character-level tokenizer trained on the task's text)."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "LoRA target modules: 'all-linear' or comma-separated names."}
    )
    tiny_hidden_size: int = field(default=128, metadata={"help": "model=tiny: width."})
    tiny_num_layers: int = field(default=2, metadata={"help": "model=tiny: layers."})
    tiny_num_heads: int = field(default=4, metadata={"help": "model=tiny: attention heads."})
    tiny_intermediate_size: int = field(default=512, metadata={"help": "model=tiny: MLP width."})

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
    from trl import TrlParser

    from llmac.distributed import trainer_kwargs

    parser = TrlParser(list(dataclass_types), prog=prog)
    if any(issubclass(t, TrainingArguments) for t in dataclass_types):
        parser.set_defaults(**trainer_kwargs())
    return parser.parse_args_and_config(args=argv)
