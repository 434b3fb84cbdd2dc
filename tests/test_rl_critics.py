"""A step critic is refused unless it reads the actor's tokens and the engine's steps."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from llmac.config import ModelConfig
from llmac.critic.model import init_critic
from llmac.data.tasks import TaskConfig
from llmac.engines import EngineConfig
from llmac.errors import ConfigError
from llmac.ppo.config import PPOConfig
from llmac.ppo.trainer import PPOTrainer
from llmac.rl.critics import load_step_critic


def _save_critic(actor, folder, delimiter: str):
    init_critic(actor, delimiter).save_pretrained(folder)
    AutoTokenizer.from_pretrained(actor).save_pretrained(folder)
    return folder


def test_a_critic_trained_on_other_steps_is_refused(tiny_actor_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_actor_dir)
    paragraphs = _save_critic(tiny_actor_dir, tmp_path / "paragraphs", "\n\n")
    with pytest.raises(
        ConfigError, match=r"value_model: .* steps ending with '\\n\\n' .* splits steps at '\\n'"
    ):
        load_step_critic(paragraphs, "float32", tokenizer, "\n", "value_model")
    critic = load_step_critic(paragraphs, "float32", tokenizer, "\n\n", "value_model")
    assert critic.config.step_delimiter == "\n\n"


def test_ppo_refuses_a_value_model_or_process_reward_model_on_other_steps(tiny_actor_dir, tmp_path):
    paragraphs = str(_save_critic(tiny_actor_dir, tmp_path / "paragraphs", "\n\n"))
    for field in ("value_model", "process_reward_model"):
        config = PPOConfig(
            output_dir=str(tmp_path / field), advantage_estimator="step_gae", **{field: paragraphs}
        )
        with pytest.raises(ConfigError, match=f"{field}: the critic at .*paragraphs"):
            PPOTrainer(ModelConfig(model_name_or_path=str(tiny_actor_dir)), TaskConfig(num_train=16, num_eval=4),
                       EngineConfig(engine="hf", engine_dtype="float32"), config)  # fmt: skip
