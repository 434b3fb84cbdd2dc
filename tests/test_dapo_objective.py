"""DAPO's (Direct Advantage Policy Optimization) pure parts against hand-computed values: advantages,
state selection, the squared loss on summed step log-probs, and what beta does to the log-ratios."""

from __future__ import annotations

import pytest
import torch

from llmac.dapo.advantages import candidate_advantages, has_spread, select_states
from llmac.dapo.objective import dapo_loss, step_logprobs
from llmac.dapo.states import Node, balanced_subset, group_by_state, unique_nodes, visit_counts


def test_advantages_are_values_minus_the_states_mean():
    # q = (0.9, 0.3, 0.0): mean 0.4
    assert candidate_advantages([0.9, 0.3, 0.0]) == pytest.approx([0.5, -0.1, -0.4])
    assert candidate_advantages([0.25, 0.75]) == pytest.approx([-0.25, 0.25])
    assert candidate_advantages([0.6]) == [0.0]


def test_states_are_kept_by_their_values_spread_and_skips_counted():
    values = [[0.9, 0.3], [0.5], [0.2, 0.2, 0.2], [0.5, 0.45], [0.0, 0.1], [1.0, 0.0, 0.5]]
    selection = select_states(values, threshold=0.1)
    assert selection.kept == [0, 4, 5]  # spreads 0.6, 0.1 (= threshold, kept), 1.0
    assert (selection.single_candidate, selection.all_equal, selection.below_threshold) == (1, 1, 1)
    assert selection.skipped == 3
    assert not has_spread([0.3, 0.3], 0.0)  # all equal: no signal even at threshold 0
    assert has_spread([0.3, 0.31], 0.0)


def test_step_logprob_is_the_sum_over_the_steps_tokens():
    token_logprobs = torch.tensor([[-0.5, -1.0, -2.0], [-0.25, -7.0, -9.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert step_logprobs(token_logprobs, mask).tolist() == [-3.5, -0.25]


def test_loss_by_hand():
    logprobs = torch.tensor([-3.0, -2.0, -1.0])
    ref = torch.tensor([-3.5, -2.0, -0.8])  # log-ratios 0.5, 0, -0.2
    advantages = torch.tensor([0.01, 0.0, -0.004])  # / beta 0.01 -> 1, 0, -0.4
    loss = dapo_loss(logprobs, ref, advantages, beta=0.01)
    assert loss.tolist() == pytest.approx([0.5 * 0.5**2, 0.0, 0.5 * 0.2**2])
    # gradient wrt log pi: -(A/beta - log_ratio)
    lp = logprobs.clone().requires_grad_(True)
    dapo_loss(lp, ref, advantages, 0.01).sum().backward()
    assert lp.grad.tolist() == pytest.approx([-0.5, 0.0, 0.2])
    with pytest.raises(ValueError, match="beta must be > 0"):
        dapo_loss(logprobs, ref, advantages, 0.0)


def _train_log_ratios(beta: float, steps: int = 30) -> torch.Tensor:
    """A 3-action softmax policy at one state, trained on DAPO's loss from pi_ref = pi_0."""
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(3))
    ref = torch.log_softmax(logits.detach(), 0)
    advantages = torch.tensor(candidate_advantages([0.8, 0.5, 0.2]))
    optimizer = torch.optim.SGD([logits], lr=0.05)
    for _ in range(steps):
        loss = dapo_loss(torch.log_softmax(logits, 0), ref, advantages, beta).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.log_softmax(logits.detach(), 0) - ref


def test_a_larger_beta_moves_the_log_ratios_less():
    small, large = _train_log_ratios(beta=0.1), _train_log_ratios(beta=1.0)
    for ratios in (small, large):
        assert ratios[0] > 0 > ratios[2]  # the best candidate up, the worst down
        assert ratios[0] > ratios[1] > ratios[2]  # in the order of the advantages
    assert small.abs().sum() > 5 * large.abs().sum()  # about beta's ratio, 10


def test_balanced_subsets():
    assert balanced_subset([True] * 4 + [False] * 4, 6) == [0, 1, 2, 4, 5, 6]
    assert balanced_subset([True, False, False, False, False, False, False], 6) == [0, 1, 2, 3, 4, 5]
    assert balanced_subset([False, True, True, True, True, True], 4) == [0, 1, 2, 3]
    assert balanced_subset([True, True], 6) == [0, 1]


def test_nodes_are_deduplicated_by_state_step_and_ending():
    solutions = [["a", "b", "c"], ["a", "b", "d"], ["a", "x"], ["a", "b"]]
    nodes = unique_nodes(solutions)
    assert nodes == [
        Node((), "a", False),
        Node(("a",), "b", False),
        Node(("a", "b"), "c", True),
        Node(("a", "b"), "d", True),
        Node(("a",), "x", True),
        Node(("a",), "b", True),  # ending after "b" is another action than going on
    ]
    assert group_by_state(nodes) == {(): [0], ("a",): [1, 4, 5], ("a", "b"): [2, 3]}
    assert visit_counts(solutions, nodes) == [4, 2, 1, 1, 1, 1]
