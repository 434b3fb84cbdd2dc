"""The models a PPO run trains and reads: the actor and its value model in one prepared module with one
optimizer and schedule, the frozen reference, and the process reward model."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from llmac.config import ModelConfig
from llmac.critic.model import init_critic
from llmac.distributed import is_deepspeed_zero3, prepare_frozen_model
from llmac.engines import EngineConfig, engine_compute_dtype
from llmac.errors import ConfigError
from llmac.models import load_actor
from llmac.ppo.config import PPOConfig
from llmac.rl.critics import load_step_critic
from llmac.rl.forward import PolicyAndValue, dtype_name, precision_mismatch
from llmac.schedules import lr_multiplier

logger = logging.getLogger(__name__)


@dataclass
class PPOModels:
    model: torch.nn.Module  # the prepared PolicyAndValue
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    reference: torch.nn.Module | None  # None without KL, or with LoRA (the adapters are disabled instead)
    process_reward_model: torch.nn.Module | None


def build_models(model_config: ModelConfig, engine_config: EngineConfig, config: PPOConfig, accelerator,
                 tokenizer) -> PPOModels:  # fmt: skip
    """The actor (LoRA-wrapped if asked) and its value model in one prepared module, their AdamW (one
    learning rate each) and its schedule (linear warm-up, then ``lr_scheduler_type``); the reference and
    the process reward model, frozen and placed like the trained one."""
    actor_path, dtype, delimiter = (
        Path(model_config.model_name_or_path),
        model_config.dtype,
        engine_config.delimiter,
    )
    policy = load_actor(actor_path, dtype, model_config.lora_settings())
    check_engine_precision(next(policy.parameters()).dtype, engine_config, actor_path, config.old_logprobs)
    check_lora_on_tied_weights(policy, model_config.lora_target_modules, accelerator)
    value = None
    if config.uses_value_model:
        value = (
            init_critic(actor_path, delimiter, dtype)
            if config.value_model is None
            else load_step_critic(config.value_model, dtype, tokenizer, delimiter, "value_model")
        )
    groups = [{"params": [p for p in policy.parameters() if p.requires_grad], "lr": config.learning_rate}]
    if value is not None:
        groups.append({"params": list(value.parameters()), "lr": config.value_learning_rate})
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    total_steps = config.num_iterations * config.optimizer_steps_per_iteration(accelerator.num_processes)
    # Stepped by hand once per optimizer step (a prepared scheduler steps once per process).
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(config.lr_scheduler_type, config.warmup_steps, total_steps)
    )
    accelerator.register_for_checkpointing(scheduler)
    model, optimizer = accelerator.prepare(PolicyAndValue(policy, value), optimizer)
    model.eval()  # no dropout: old and new log-probs must come from the same function
    reference = None
    if config.kl_coef > 0 and not model_config.use_lora:
        reference = prepare_frozen_model(load_actor(actor_path, dtype), accelerator)
    process_reward_model = None
    if config.process_reward_model:
        critic = load_step_critic(
            config.process_reward_model, dtype, tokenizer, delimiter, "process_reward_model"
        )
        process_reward_model = prepare_frozen_model(critic, accelerator)
    return PPOModels(model, optimizer, scheduler, reference, process_reward_model)


def check_engine_precision(trainer_dtype: torch.dtype, engine_config: EngineConfig, actor_path: Path,
                           old_logprobs: str) -> None:  # fmt: skip
    """Refuse an engine computing in another dtype than the trainer when the PPO ratio starts from its
    log-probs (``old_logprobs='engine'``); otherwise warn in one line what gap that costs."""
    engine_dtype = engine_compute_dtype(engine_config, actor_path)
    mismatch = precision_mismatch(trainer_dtype, engine_dtype)
    if mismatch is None:
        return
    if old_logprobs == "engine":
        raise ConfigError(
            f"llmac ppo: {mismatch}; with old_logprobs=engine the PPO ratio would start that far from 1. "
            f"Set engine_dtype: {dtype_name(trainer_dtype)} (engine_dtype={engine_config.engine_dtype} now) or dtype to "
            "match, or old_logprobs: trainer"
        )
    logger.warning("llmac ppo: %s", mismatch)


def check_lora_on_tied_weights(policy: torch.nn.Module, targets: str, accelerator) -> None:
    """Refuse LoRA on a tied embedding or head under ZeRO-3, in one line instead of deep in DeepSpeed:
    peft gives the head the embedding's adapter as transposed views, which ZeRO-3 cannot partition."""
    peft_config = getattr(policy, "peft_config", {}).get("default")
    if getattr(peft_config, "ensure_weight_tying", False) and is_deepspeed_zero3(accelerator):
        raise ConfigError(
            f"llmac ppo: lora_target_modules={targets} adapts the tied embeddings/head, and DeepSpeed ZeRO-3 "
            "cannot partition the adapter peft shares between them: leave embed_tokens and lm_head out "
            "of lora_target_modules"
        )
