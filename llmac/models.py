"""Building and loading actors: plain ``from_pretrained``, optional LoRA, and a tiny-model factory.

Loading checks a local-looking path first (:mod:`llmac.paths`): a missing folder is one clear error
at once, never a Hub lookup. The tiny factory makes a character-level BPE tokenizer (trained with ``tokenizers`` on the task's
own text) and a small Qwen2 model, its embeddings untied unless asked (``tie_word_embeddings``, as
SmolLM2 and Qwen2.5 tie them). It is what tests and the CPU demo train; nothing here touches the Hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from llmac.config import option
from llmac.paths import check_input_path, check_model_path
from llmac.validation import check_fields, require_multiple

PAD, EOS, USER, ASSISTANT = "<|pad|>", "<|endoftext|>", "<|user|>", "<|assistant|>"

# Qwen2's pre-tokenization: transformers rebuilds any tokenizer saved beside a Qwen2 config as a
# Qwen2Tokenizer (byte-level, this regex, NFC, unk/eos "<|endoftext|>"), so the tiny tokenizer is
# built the same way and reloads token for token.
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# The tiny tokenizer's chat template: "<|user|>question\n<|assistant|>answer<|endoftext|>".
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}" + USER + "{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "{{ m['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Size of the tiny Qwen2 actor. Defaults are the CPU demo's calibrated 0.53M-parameter model."""

    hidden_size: int = option(128, "Model width.", range="[1, inf)")
    num_layers: int = option(2, "Transformer layers.", range="[1, inf)")
    num_heads: int = option(4, "Attention heads (also key/value heads).", range="[1, inf)")
    intermediate_size: int = option(512, "MLP width.", range="[1, inf)")
    max_position_embeddings: int = option(512, "Longest prompt + completion.", range="[1, inf)")
    vocab_size: int = option(
        0, "BPE vocabulary size; 0 keeps one token per character (fastest to learn).", range="[0, inf)"
    )
    seed: int = option(0, "Seed for the initial weights.", range="[0, inf)")
    tie_word_embeddings: bool = option(
        False, "One matrix for the input embeddings and the output head (as SmolLM2 and Qwen2.5)."
    )

    def __post_init__(self) -> None:
        check_fields(self)
        require_multiple(self, "hidden_size", of="num_heads")


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``; ``vocab_size=0`` gives one token per character.

    Only the bytes that occur in ``texts`` get a token, so the vocabulary stays tiny (~30 for the
    arithmetic task); text with other characters cannot be encoded.
    """
    texts = list(texts)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    alphabet = sorted(
        {ch for text in texts for piece, _ in byte_level.pre_tokenize_str(text) for ch in piece}
    )
    specials = [EOS, PAD, USER, ASSISTANT]
    size = vocab_size or len(alphabet) + len(specials)
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=EOS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, config: TinyModelConfig | None = None
) -> Qwen2ForCausalLM:
    """A freshly initialised small Qwen2 causal LM sized for ``tokenizer`` (embeddings tied if ``config`` says)."""
    config = config or TinyModelConfig()
    model_config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = Qwen2ForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_tiny_actor(
    texts: Iterable[str], output_dir: str | Path, config: TinyModelConfig | None = None
) -> Path:
    """Train a tokenizer on ``texts``, build the tiny model and save both (safetensors) to ``output_dir``."""
    config = config or TinyModelConfig()
    tokenizer = train_tiny_tokenizer(texts, config.vocab_size)
    model = build_tiny_model(tokenizer, config)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def warm_tiny_actor(
    questions: Sequence[str],
    solutions: Sequence[str],
    output_dir: str | Path,
    steps: int,
    config: TinyModelConfig | None = None,
    batch_size: int = 32,
    lr: float = 3e-3,
) -> Path:
    """A tiny actor given ``steps`` plain next-token AdamW steps on chat transcripts, then saved.

    Seconds of training make its distributions peaked and its samples solution-like, which is what
    tests and benchmarks need from a model; real warm starts use ``llmac sft``.
    """
    config = config or TinyModelConfig()
    tokenizer = train_tiny_tokenizer(list(questions) + list(solutions), config.vocab_size)
    model = build_tiny_model(tokenizer, config)
    transcripts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": s}], tokenize=False
        )
        for q, s in zip(questions, solutions, strict=True)
    ]
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        picked = torch.randint(len(transcripts), (batch_size,), generator=generator).tolist()
        batch = tokenizer([transcripts[i] for i in picked], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return output_dir


@dataclass
class LoraSettings:
    """Optional LoRA adapters on the actor (peft)."""

    r: int = option(16, "LoRA rank.", range="[1, inf)")
    alpha: int = option(32, "LoRA scaling alpha.", range="[1, inf)")
    dropout: float = option(0.0, "LoRA dropout.", range="[0, 1)")
    target_modules: str = option("all-linear", "Modules to adapt: 'all-linear' or comma-separated names.")

    def __post_init__(self) -> None:
        check_fields(self)


def lora_config(lora: LoraSettings, tied_names: Iterable[str] = ()):
    """The peft ``LoraConfig`` of ``lora`` for a causal LM (comma-separated targets become a list).

    ``tied_names`` names the modules sharing one weight (a tied model's ``embed_tokens`` and
    ``lm_head``). Adapting one of them makes peft adapt the other with the same adapter: without that,
    the embedding's adapter would not reach the head, and the trainer would silently train an untied
    copy of a model whose config (and every engine) ties them.
    """
    from peft import LoraConfig

    targets = lora.target_modules
    names = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
    short_names = {module.rsplit(".", 1)[-1] for module in tied_names}
    tie = targets != "all-linear" and any(name.rsplit(".", 1)[-1] in short_names for name in names)
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        # peft reads a string as one regex over module names, so "q_proj,v_proj" must be split.
        target_modules=names,
        task_type="CAUSAL_LM",
        **({"ensure_weight_tying": True} if tie else {}),
    )


def load_tokenizer(name_or_path: str | Path):
    """A tokenizer with a pad token (the EOS token when it has none)."""
    check_input_path(name_or_path, "tokenizer folder")
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_actor(
    name_or_path: str | Path, dtype: str | torch.dtype = "float32", lora: LoraSettings | None = None
) -> torch.nn.Module:
    """Load a causal LM with plain ``from_pretrained`` (no remote code, safetensors), LoRA-wrapped if asked."""
    check_model_path(name_or_path)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=torch_dtype, use_safetensors=True)
    if lora is None:
        return model
    from peft import get_peft_model

    return get_peft_model(model, lora_config(lora, tied_modules(model)))


def tied_modules(model: torch.nn.Module) -> set[str]:
    """Names of the modules whose weights ``model`` ties together (``{"lm_head", "model.embed_tokens"}``)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {name.rsplit(".", 1)[0] for pair in tied.items() for name in pair}


def plain_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``model`` under its base model's Hugging Face names, LoRA deltas merged in.

    For a peft model the merge is computed out of place (W + scale * B A), leaving the adapters and
    the base weights untouched, so it can run every iteration (engine weight sync) without drift.
    """
    return {name: tensor for _, read in plain_weight_units(model) for name, tensor in read().items()}


WeightUnit = tuple[torch.nn.Module, Callable[[], dict[str, torch.Tensor]]]


def plain_weight_units(model: torch.nn.Module) -> Iterator[WeightUnit]:
    """:func:`plain_state_dict` in small units: a module and a function reading its plain tensors.

    A unit is one module's own parameters and persistent buffers, or a whole LoRA layer (base weight
    and adapters, read merged). Reading one unit at a time is what lets ZeRO-3 weights be gathered
    layer by layer (:func:`llmac.distributed.stream_weights`).
    """
    from peft import PeftModel

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    lora_layers: list[str] = []
    for name, module in base.named_modules():
        if "lora_" in name or any(name.startswith(f"{layer}.") for layer in lora_layers):
            continue  # adapters, or inside a LoRA layer (read with it)
        prefix = f"{name}." if name else ""
        plain = prefix.replace(".base_layer.", ".")
        if hasattr(module, "get_delta_weight") and module.active_adapters:
            lora_layers.append(name)
            yield module, partial(_merged_lora_tensors, module, plain)
        elif _own_tensors(module, plain):
            yield module, partial(_own_tensors, module, plain)


def _own_tensors(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {f"{prefix}{k}": v.detach() for k, v in module._parameters.items() if v is not None}
    skip = module._non_persistent_buffers_set
    tensors.update(
        {f"{prefix}{k}": v.detach() for k, v in module._buffers.items() if v is not None and k not in skip}
    )
    return tensors


def _merged_lora_tensors(layer: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A LoRA layer's base tensors under the base model's names, its weight with W + scale * B A."""
    tensors = _own_tensors(layer.get_base_layer(), prefix)
    weight = tensors[f"{prefix}weight"]
    tensors[f"{prefix}weight"] = (
        weight + layer.get_delta_weight(layer.active_adapters[0]).to(weight.dtype)
    ).detach()
    return tensors
