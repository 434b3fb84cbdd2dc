"""PPO batches and targets on hand-built rollouts: positions, step rewards and GAE, checked by hand."""

from __future__ import annotations

import pytest
import torch

from llmac.rl.batch import Sample, build_token_batch, has_signal, token_steps
from llmac.rl.targets import (
    sequence_targets,
    step_gae_targets,
    step_rewards,
    token_gae_targets,
    token_rewards,
)


def _sample(prompt, tokens, step_ends, reward=1.0):
    return Sample(0, prompt, tokens, step_ends, "", "stop", reward, [-0.5] * len(tokens))


@pytest.fixture
def batch():
    # Row 0: prompt of 3 tokens; steps = tokens 0-1, 2-3, and token 4 (an EOS after the last step's
    # text) joins the last step. Row 1: prompt of 2 tokens, one step of 3 tokens.
    samples = [_sample([5, 6, 7], [10, 11, 12, 13, 14], [1, 3]), _sample([5, 6], [20, 21, 22], [2], 0.0)]
    return build_token_batch(samples, [1.0, 0.0], pad_id=0)


def test_positions(batch):
    assert batch.input_ids.tolist() == [[5, 6, 7, 10, 11, 12, 13, 14], [5, 6, 20, 21, 22, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    # Completion token t sits at position p + t; its log-prob comes from the logits at p + t - 1.
    assert batch.completion_positions.tolist() == [[2, 3, 4, 5, 6], [1, 2, 3, 0, 0]]
    assert batch.completion_mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert batch.token_step.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, -1, -1]]
    # V(s_0) at the prompt's last token, V(s_1) at the last token of step 0.
    assert batch.step_positions.tolist() == [[2, 4], [1, 0]]
    assert batch.step_end_positions.tolist() == [[4, 6], [4, 0]]
    assert batch.step_mask.tolist() == [[True, True], [True, False]]
    assert batch.engine_logprobs[1].tolist() == [-0.5, -0.5, -0.5, 0.0, 0.0]


def test_a_completion_without_steps_is_one_step():
    assert token_steps(_sample([1], [7, 8, 9], [])) == ([2], [0, 0, 0])
    assert has_signal([_sample([1], [2], [0], 1.0), _sample([1], [2], [0], 0.0)])
    assert not has_signal([_sample([1], [2], [0], 1.0)] * 3)


def _values():
    values = torch.zeros(2, 8)
    values[0, 2], values[0, 4], values[1, 1] = 0.4, 0.7, 0.5
    return values


def test_step_gae_by_hand(batch):
    targets = step_gae_targets(batch, _values(), gamma=0.9, lam=0.8)
    # Row 0: r = [0, 1], V = [0.4, 0.7], V after the last step = 0.
    # d1 = 1 - 0.7 = 0.3; d0 = 0 + 0.9 * 0.7 - 0.4 = 0.23; A0 = 0.23 + 0.9 * 0.8 * 0.3 = 0.446.
    # Row 1: one step, r = 0, V = 0.5: A0 = -0.5, return 0.
    expected_tokens = [[0.446, 0.446, 0.3, 0.3, 0.3], [-0.5, -0.5, -0.5, 0.0, 0.0]]
    assert torch.allclose(targets.advantages, torch.tensor(expected_tokens), atol=1e-6)
    assert torch.allclose(targets.returns, torch.tensor([[0.846, 1.0], [0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(targets.old_values, torch.tensor([[0.4, 0.7], [0.5, 0.0]]))
    assert targets.value_mask.tolist() == [[True, True], [True, False]]


def test_step_rewards_with_kl_and_process_rewards(batch):
    penalty = torch.tensor([[0.1, 0.1, 0.2, 0.2, 0.2], [0.1, 0.1, 0.1, 9.0, 9.0]])  # 9s are padding
    process = torch.tensor([[0.5, 0.25], [0.9, 7.0]])  # 7 is padding
    # Row 0: step 0 = -(0.1 + 0.1) + 0.5 = 0.3; step 1 = 1 - 0.6 + 0.25 = 0.65. Row 1: -0.3 + 0.9 = 0.6.
    assert torch.allclose(step_rewards(batch, penalty, process), torch.tensor([[0.3, 0.65], [0.6, 0.0]]))
    # Per token: outcome on the last token, process rewards on each step's last token (row 0: tokens 1
    # and 3; row 1: token 2).
    expected = [[-0.1, 0.4, -0.2, 0.05, 0.8], [-0.1, -0.1, 0.8, 0.0, 0.0]]
    assert torch.allclose(token_rewards(batch, penalty, process), torch.tensor(expected), atol=1e-6)


def test_token_gae_reads_a_value_before_every_token(batch):
    values = torch.arange(8, dtype=torch.float32).repeat(2, 1) / 10  # V at position j = j / 10
    targets = token_gae_targets(batch, values, gamma=1.0, lam=1.0)
    # gamma = lam = 1: A_t = (sum of rewards from t on) - V(s_t); V(s_t) is read at position p - 1 + t.
    expected = [[1 - 0.2, 1 - 0.3, 1 - 0.4, 1 - 0.5, 1 - 0.6], [-0.1, -0.2, -0.3, 0.0, 0.0]]
    assert torch.allclose(targets.advantages, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(targets.returns, torch.tensor([[1.0] * 5, [0.0] * 5]), atol=1e-6)


def test_sequence_targets_cover_completion_tokens_only(batch):
    targets = sequence_targets(batch, torch.tensor([0.7, -0.7]))
    assert torch.allclose(targets.advantages, torch.tensor([[0.7] * 5, [-0.7] * 3 + [0.0] * 2]))
    assert targets.returns is None
