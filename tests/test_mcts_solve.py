"""``llmac mcts solve``: search guided by the critic alone (the verifier only scores the answers), the
answer picked by value or by visits, unfinished paths finished greedily, accuracy recomputed."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import load_from_disk
from test_mcts_build import actor_dir  # noqa: F401 - the small actor fixture
from transformers import AutoTokenizer

from llmac.critic.model import init_critic, load_critic_tokenizer
from llmac.critic.scoring import score_steps
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import SamplingConfig
from llmac.engines.hf import HFEngine
from llmac.mcts.build import load_trees
from llmac.mcts.solve import chosen_node
from llmac.mcts.tree import Node, StepSample, Tree, from_probability

CALLS: list[int] = []  # how many texts each call of the scoring reward got


def counted_reward(texts, golds):
    CALLS.append(len(texts))
    return [float(len(t) % 3 == 0) for t in texts]


@pytest.fixture(scope="module")
def critic_dir(actor_dir, tmp_path_factory):  # noqa: F811
    """A critic on the actor's backbone with a random head, so values differ from prefix to prefix."""
    model = init_critic(actor_dir, "\n")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        weight = model.score.weight
        weight.copy_(torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5)
    folder = tmp_path_factory.mktemp("critic")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(actor_dir).save_pretrained(folder)
    return folder


def _solve(actor, critic, output, answer_by, iterations=4):
    from llmac.cli import main

    CALLS.clear()
    main(["mcts", "solve", "--model_name_or_path", str(actor), "--critic", str(critic), "--output_dir",
          str(output), "--task", "arithmetic", "--num_train", "4", "--num_eval", "3", "--task_seed", "5",
          "--iterations", str(iterations), "--branching", "3", "--max_children", "3", "--max_depth", "3",
          "--max_step_tokens", "24", "--finish_max_new_tokens", "24", "--questions_per_shard", "2",
          "--answer_by", answer_by, "--reward", "test_mcts_solve:counted_reward", "--engine", "hf",
          "--engine_dtype", "float32", "--progress", "false"])  # fmt: skip
    return load_from_disk(str(output / "answers")), json.loads((output / "mcts_solve.json").read_text())


def test_solve_by_critic_value(actor_dir, critic_dir, tmp_path):  # noqa: F811
    answers, metrics = _solve(actor_dir, critic_dir, tmp_path / "out", "value")
    assert CALLS == [3]  # the verifier saw the 3 answers once, and never the search
    assert answers["question"] == load_task(TaskConfig(task="arithmetic", num_train=4, num_eval=3, task_seed=5),
                                            "eval")["question"]  # fmt: skip
    assert answers["reward"] == counted_reward(answers["response"], answers["answer"])
    assert metrics["accuracy"] == pytest.approx(sum(answers["correct"]) / 3)
    assert metrics["generated_tokens"] == sum(answers["generated_tokens"]) > 0
    trees = load_trees(tmp_path / "out")
    critic = load_critic_tokenizer(critic_dir)
    from llmac.critic.model import load_critic

    model = load_critic(critic_dir)
    once = [(t, n) for t in trees for n in t.nodes() if n.visits == 1 and n.prefix_text().strip()]
    assert len(once) >= 3
    assert max(n.q for _, n in once) - min(n.q for _, n in once) > 0.05  # the critic tells prefixes apart
    # a node visited once holds exactly the critic's value of its prefix: no verifier, no rollouts
    values = score_steps(
        model, critic, [t.question for t, _ in once], [n.prefix_text() for _, n in once], "\n"
    )
    for (tree, node), v in zip(once, values, strict=True):
        assert node.q == pytest.approx(from_probability(v[-1], tree.scale), abs=1e-6)
        assert node.reward is None and node.correct is None
    for tree, row in zip(trees, answers, strict=True):
        terminals = [n for n in tree.nodes() if n.terminal]
        assert all(n.evaluation is not None for n in terminals)
        if terminals:  # the best-valued terminal answers, as it is
            best = max(n.q for n in terminals)
            assert not row["finished"] and row["value"] == pytest.approx((best + 1) / 2)
            assert row["response"] in [n.prefix_text() for n in terminals if n.q == best]
        else:
            assert row["finished"]


def test_solve_by_visits_finishes_greedily(actor_dir, critic_dir, tmp_path):  # noqa: F811
    answers, metrics = _solve(actor_dir, critic_dir, tmp_path / "out", "visits", iterations=2)
    assert metrics["answer_by"] == "visits" and metrics["finished_greedily"] == sum(answers["finished"]) > 0
    engine = HFEngine(actor_dir, dtype="float32")
    for tree, row in zip(load_trees(tmp_path / "out"), answers, strict=True):
        path = tree.most_visited_path()
        prefix = path[-1].prefix_text()
        assert row["response"].startswith(prefix) and row["visits"] == path[-1].visits
        assert row["finished"] == (not path[-1].terminal)
        if row["finished"]:  # the rest is the greedy continuation of the chosen path
            (rest,) = engine.continue_from([tree.prompt], [path[-1].prefix_ids()],
                                           SamplingConfig(n=1, temperature=0.0, max_new_tokens=24))  # fmt: skip
            assert row["response"] == prefix + rest[0].text


def test_chosen_node_rules():
    tree = Tree(question="q", answer="1", prompt="q", max_depth=3, max_children=2)
    a, b = tree.expand(tree.root, [StepSample("a\n", [1], False), StepSample("b", [2], True)])
    for node, value in ((a, 0.2), (a, 0.2), (a, 0.2), (b, 0.5)):
        tree.backup(node, value)
    (c,) = tree.expand(a, [StepSample("c", [3], True)])
    tree.backup(c, 0.9)
    assert chosen_node(tree, "value") is c  # the best-valued terminal, though under fewer visits
    assert chosen_node(tree, "visits") is c  # a (4 visits) then its only child
    tree.backup(b, 0.5)
    tree.backup(b, 0.5)
    tree.backup(b, 0.5)
    assert chosen_node(tree, "visits") is b and chosen_node(tree, "value") is c
    empty = Tree(question="q", answer="1", prompt="q")
    assert chosen_node(empty, "value") is empty.root and isinstance(empty.root, Node)
    with pytest.raises(ValueError, match="answer_by"):
        chosen_node(tree, "votes")


def test_search_without_a_verifier_values_terminals_by_the_evaluator():
    """Hand-traced with the scripted engine of test_mcts_search and c = 0 (unvisited first, then greedy):
    1 expands the root (a 0.5 -> 0.0, x 0.0 -> -1), 2 expands a (b 0.75 -> 0.5, c 0.25 -> -0.5), 3 expands
    b into two terminals valued by the evaluator (Answer: 7 0.9 -> 0.8, Answer: 8 0.1 -> -0.8), 4 selects
    the terminal Answer: 7 again, which backs up its own evaluation a second time."""
    from test_mcts_search import ScriptedStepEngine

    from llmac.mcts.search import Search, SearchConfig, new_trees

    probabilities = {"a\n": 0.5, "x\n": 0.0, "a\nb\n": 0.75, "a\nc\n": 0.25, "a\nb\nAnswer: 7": 0.9,
                     "a\nb\nAnswer: 8": 0.1}  # fmt: skip
    asked: list[str] = []

    def evaluate(leaves):
        asked.extend(node.prefix_text() for _, node in leaves)
        return [probabilities[node.prefix_text()] for _, node in leaves]

    engine = ScriptedStepEngine()
    config = SearchConfig(iterations=4, branching=2, max_children=2, c=0.0, seed=1)
    (tree,) = new_trees(engine, ["q"], ["7"], config)
    Search(engine, [tree], config, evaluate, reward_fn=None).run()
    assert asked == ["a\n", "x\n", "a\nb\n", "a\nc\n", "a\nb\nAnswer: 7", "a\nb\nAnswer: 8"]
    assert engine.rollout_calls == [] and len(engine.step_calls) == 3  # iteration 4 expanded nothing
    right, wrong = tree.root.children[0].children[0].children
    assert (right.visits, right.value_sum, right.evaluation) == (2, pytest.approx(1.6), pytest.approx(0.8))
    assert (wrong.visits, wrong.evaluation) == (1, pytest.approx(-0.8))
    assert right.reward is right.correct is wrong.reward is None  # nothing was verified
    # two new nodes in each of iterations 1-3, the terminal again in 4: 7 evaluations under the root
    assert tree.root.visits == 7 and tree.root.value_sum == pytest.approx(
        0.0 - 1 + 0.5 - 0.5 + 0.8 - 0.8 + 0.8
    )
    assert chosen_node(tree, "value") is right and right.prefix_text() == "a\nb\nAnswer: 7"
