"""The step critic as an ordinary Hugging Face model.

A step critic is a causal-LM backbone with a one-logit token-classification head
(``AutoModelForTokenClassification``, ``num_labels=1``). The logit at the last token of step ``t`` is
``logit V(s_{t+1})``: the critic's estimate that the final answer will be correct given the question
and steps ``0..t``. Because the backbone is causal, one forward pass over question + response scores
every step. Saved critics load with plain ``from_pretrained``: no custom code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel
from transformers.utils import logging as hf_logging

from llmac.errors import ConfigError
from llmac.models import TinyModelConfig, build_tiny_model, load_tokenizer
from llmac.steps import DEFAULT_DELIMITER

VALUE_LABEL = "step_value"


def _dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    return getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype


def _critic_fields(delimiter: str) -> dict:
    """Config fields that make a token classifier a step critic (saved in config.json)."""
    return {
        "num_labels": 1,
        "id2label": {0: VALUE_LABEL},
        "label2id": {VALUE_LABEL: 0},
        # Dropout on the head would make training noisier and scoring differ between train/eval modes
        # for no gain at this size; the backbone keeps its own settings.
        "classifier_dropout": 0.0,
        "step_delimiter": delimiter,
    }


def init_critic(
    model_path: str | Path,
    delimiter: str = DEFAULT_DELIMITER,
    dtype: str | torch.dtype = "float32",
    extra_layers: int = 0,
) -> PreTrainedModel:
    """A new critic whose backbone is the causal LM at ``model_path`` (its LM head is dropped).

    The value head starts at zero, so every step starts at V = 0.5 and the first gradients come from
    the labels rather than from a random head. ``extra_layers`` new decoder layers go on top of the
    actor's, initialised as the identity (their output projections zeroed): the actor's last layer
    forms its next-token prediction at each position, and only a layer above it can compare that
    prediction with the token that follows, which is what checking a step takes.
    """
    config = AutoConfig.from_pretrained(str(model_path))
    for key, value in _critic_fields(delimiter).items():
        setattr(config, key, value)
    actor_layers = config.num_hidden_layers
    if extra_layers < 0:
        raise ValueError(f"extra_layers must be >= 0, got {extra_layers}")
    if extra_layers:
        config.num_hidden_layers += extra_layers
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types) + [config.layer_types[-1]] * extra_layers
    # The load report lists the dropped LM head and the new value head, both expected here.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            str(model_path), config=config, dtype=_dtype(dtype), use_safetensors=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    _zero_params(list(model.score.parameters()))
    for layer in model.model.layers[actor_layers:]:
        outputs = [m.weight for name, m in layer.named_modules() if name.endswith(("o_proj", "down_proj"))]
        if len(outputs) != 2:
            raise ValueError(f"extra_layers: cannot find the o_proj/down_proj of a {type(layer).__name__}")
        _zero_params(outputs)
    return model


def build_tiny_critic(
    tokenizer, config: TinyModelConfig | None = None, delimiter: str = DEFAULT_DELIMITER
) -> PreTrainedModel:
    """A randomly initialised tiny critic (the tiny actor's architecture with a value head)."""
    actor = build_tiny_model(tokenizer, config)
    critic_config = actor.config
    for key, value in _critic_fields(delimiter).items():
        setattr(critic_config, key, value)
    critic_config.architectures = None
    model = AutoModelForTokenClassification.from_config(critic_config)
    model.model.load_state_dict(actor.model.state_dict())
    _zero_params(list(model.score.parameters()))
    return model


def _zero_params(params: list[torch.nn.Parameter]) -> None:
    if any(hasattr(p, "ds_id") for p in params):
        # Under ZeRO-3, from_pretrained leaves each process an empty placeholder per parameter: zero the
        # gathered head (rank 0's change is scattered back on exit).
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
            for p in params:
                p.zero_()
        return
    with torch.no_grad():
        for p in params:
            p.zero_()


def load_critic(path: str | Path, dtype: str | torch.dtype = "float32") -> PreTrainedModel:
    """A saved critic, checked to be one: a token classifier with a single output."""
    config = AutoConfig.from_pretrained(str(path))
    token_classifier = any(a.endswith("ForTokenClassification") for a in config.architectures or [])
    if getattr(config, "num_labels", None) != 1 or not token_classifier:
        raise ConfigError(
            f"{path} is not a step critic: its config has num_labels={config.num_labels} and "
            f"architectures={config.architectures}; expected a *ForTokenClassification with num_labels=1 "
            "(a token-classification head with one value logit). To start a critic from an actor, use "
            "init_critic / `llmac critic train --init_from`."
        )
    return AutoModelForTokenClassification.from_pretrained(
        str(path), dtype=_dtype(dtype), use_safetensors=True
    )


def critic_delimiter(model: PreTrainedModel) -> str:
    """The step delimiter the critic was trained with."""
    return getattr(model.config, "step_delimiter", DEFAULT_DELIMITER)


def load_critic_tokenizer(path: str | Path):
    """The critic's tokenizer, right-padded (scores are read at fixed positions from the left)."""
    tokenizer = load_tokenizer(path)
    tokenizer.padding_side = "right"
    return tokenizer
