import math

import pytest

from llmac.ppo.config import PPOConfig
from llmac.schedules import lr_multiplier


def test_warmup_rises_linearly_then_constant_holds():
    factor = lr_multiplier("constant", warmup_steps=4, total_steps=10)
    assert [factor(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_decays_from_one_to_zero_after_warmup():
    factor = lr_multiplier("cosine", warmup_steps=2, total_steps=6)  # 4 decay steps
    assert factor(1) == 1.0
    assert [factor(s) for s in (2, 3, 4, 5, 6)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    )
    assert factor(100) == pytest.approx(0.0)


def test_linear_decay_and_unknown_kind():
    factor = lr_multiplier("linear", warmup_steps=0, total_steps=5)
    assert [factor(s) for s in range(7)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0])
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'step'"):
        lr_multiplier("step", 1, 10)


def test_optimizer_steps_per_iteration_counts_each_process_share():
    config = PPOConfig(prompts_per_iteration=64, samples_per_prompt=8, mini_batch_size=128, ppo_epochs=2)
    assert config.optimizer_steps_per_iteration(1) == 2 * 4  # 512 completions in minibatches of 128
    assert config.optimizer_steps_per_iteration(2) == 2 * 2  # 256 per process
    config = PPOConfig(prompts_per_iteration=5, samples_per_prompt=3, mini_batch_size=4)
    assert config.optimizer_steps_per_iteration(2) == 3  # 3 groups x 3 = 9 completions: 4 + 4 + 1
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        PPOConfig(lr_scheduler_type="exponential")
