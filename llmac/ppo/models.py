"""The models a PPO run trains and reads: the actor and its value model in one prepared module with one
optimizer and schedule, the frozen reference, and the process reward model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmac.config import ModelConfig
from llmac.critic.model import init_critic
from llmac.distributed import prepare_frozen_model
from llmac.engines import EngineConfig
from llmac.models import load_actor
from llmac.ppo.config import PPOConfig
from llmac.rl.critics import load_step_critic
from llmac.rl.forward import PolicyAndValue
from llmac.schedules import lr_multiplier


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
