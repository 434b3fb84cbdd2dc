"""Batched MCTS with a scripted engine whose right answer path is known.

The engine's candidate steps and rollouts are fixed per prefix, so the first iterations can be
traced by hand, and a longer search must settle on the one path to the gold answer.
"""

from __future__ import annotations

import pytest

from llmac.critic.labelling import MCLabelConfig
from llmac.engines import Completion, SamplingConfig
from llmac.mcts.search import Search, SearchConfig, new_trees, search
from llmac.mcts.tree import StepSample
from llmac.mcts.values import MixedValue, RolloutValue

GOLD = "7"
# prefix -> candidate steps (text, ends the response); sample k is candidate k % len.
STEPS = {
    "": [("a\n", False), ("x\n", False)],
    "a\n": [("b\n", False), ("c\n", False)],
    "a\nb\n": [(f"Answer: {GOLD}", True), ("Answer: 8", True)],
    "a\nc\n": [("Answer: 1", True)],
    "x\n": [("y\n", False)],
    "x\ny\n": [("Answer: 0", True)],
    "w\n": [(" \n", False)],  # only whitespace: no step
}
# prefix -> share of rollouts that reach the gold
ROLLOUTS = {"a\n": 0.5, "x\n": 0.0, "a\nb\n": 0.75, "a\nc\n": 0.25, "x\ny\n": 0.0}


class CharTokenizer:
    chat_template = None  # format_prompt gives the plain question

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def completion(text: str, finish: str) -> Completion:
    return Completion([ord(c) for c in text], [0.0] * len(text), finish, text=text)


class ScriptedStepEngine:
    """Scripted ``sample_step``/``continue_from``; records every call."""

    delimiter = "\n"

    def __init__(self) -> None:
        self.tokenizer, self.step_calls, self.rollout_calls = CharTokenizer(), [], []

    def sample_step(self, prompts, prefixes, sampling: SamplingConfig):
        texts = [self.tokenizer.decode(p) for p in prefixes]
        self.step_calls.append((list(prompts), texts, sampling))
        out = []
        for text in texts:
            candidates = STEPS[text]
            picks = [candidates[k % len(candidates)] for k in range(sampling.n)]
            out.append([completion(step, "stop" if ends else "step") for step, ends in picks])
        return out

    def continue_from(self, prompts, prefixes, sampling: SamplingConfig):
        texts = [self.tokenizer.decode(p) for p in prefixes]
        self.rollout_calls.append((list(prompts), texts, sampling))
        right = [round(ROLLOUTS[t] * sampling.n) for t in texts]
        return [
            [completion(f"z\nAnswer: {GOLD if k < r else 0}", "stop") for k in range(sampling.n)]
            for r in right
        ]


def reward(texts, golds):
    return [float(t.rstrip().endswith(f"Answer: {g}")) for t, g in zip(texts, golds, strict=True)]


def make_search(questions, config, num_rollouts=4):
    engine = ScriptedStepEngine()
    trees = new_trees(engine, questions, [GOLD] * len(questions), config)
    values = RolloutValue(engine, reward, MCLabelConfig(num_rollouts=num_rollouts, seed=5))
    return engine, trees, Search(engine, trees, config, values, reward)


def children(node):
    return {child.text: child for child in node.children}


def test_three_iterations_by_hand():
    config = SearchConfig(branching=2, selection="uct", c=1.0, scale="pm1", seed=3)
    engine, [tree], run = make_search(["q"], config)
    run.step()  # root -> a (rollouts 2/4: value 0), x (0/4: -1)
    a, x = tree.root.children
    assert (a.q, x.q, tree.root.visits, tree.root.value_sum) == (0.0, -1.0, 2, -1.0)
    assert (a.prior, x.prior) == (0.5, 0.5)
    run.step()  # UCT: a 0 + sqrt(ln 2) > x -1 + sqrt(ln 2) -> expand a: b (3/4: +0.5), c (1/4: -0.5)
    b, c = a.children
    assert (b.q, c.q, a.visits, a.q, tree.root.visits) == (0.5, -0.5, 3, 0.0, 4)
    # root N=4: a 0 + sqrt(ln4/3) = 0.68 > x -1 + sqrt(ln4) = 0.18; in a (N=3): b 0.5 + sqrt(ln3) > c.
    run.step()  # expand b: two terminals, verified: "Answer: 7" +1, "Answer: 8" -1
    right, wrong = b.children
    assert right.terminal and right.correct and right.reward == 1.0 and right.q == 1.0
    assert wrong.terminal and wrong.correct is False and wrong.q == -1.0
    # b = 0.5 + 1 - 1; a = 0 + (0.5 - 0.5) + (1 - 1); root = a's sum + x's -1.
    assert (b.visits, b.value_sum, a.visits, a.value_sum) == (3, 0.5, 5, 0.0)
    assert (tree.root.visits, tree.root.value_sum) == (6, -1.0)
    # What the engine was asked: one step call per iteration, prefixes as generated ids.
    assert [texts for _, texts, _ in engine.step_calls] == [[""], ["a\n"], ["a\nb\n"]]
    assert [s.seed for _, _, s in engine.step_calls] == [3, 5, 7]  # seed + expanded so far * b
    assert [texts for _, texts, _ in engine.rollout_calls] == [["a\n", "x\n"], ["a\nb\n", "a\nc\n"]]
    assert [s.seed for _, _, s in engine.rollout_calls] == [5, 13]  # no rollouts for terminals
    assert run.stats.nodes == 6 and run.stats.step_samples == 6 and run.stats.engine_calls == 3


def test_terminal_selected_again_backs_up_its_verdict_on_the_01_scale():
    config = SearchConfig(branching=2, selection="uct", c=0.0, scale="01")
    _, [tree], run = make_search(["q"], config)
    run.run(3)  # c = 0 is greedy: a (0.5) over x (0), then b (0.75) over c (0.25), then b's answers
    a = children(tree.root)["a\n"]
    right = children(children(a)["b\n"])[f"Answer: {GOLD}"]
    assert right.visits == 1 and right.q == 1.0
    run.step()  # greedy descent: root -> a -> b -> the correct terminal, visited again
    assert right.visits == 2 and right.value_sum == 2.0 and children(a)["b\n"].visits == 4


@pytest.mark.parametrize("selection", ["uct", "puct"])
def test_search_finds_the_right_path_and_visits_concentrate_on_it(selection):
    config = SearchConfig(iterations=30, branching=2, selection=selection, c=1.0)
    engine = ScriptedStepEngine()
    values = RolloutValue(engine, reward, MCLabelConfig(num_rollouts=4, seed=1))
    trees, stats = search(engine, ["q0", "q1"], [GOLD, GOLD], config, values, reward)
    for tree in trees:
        path = tree.most_visited_path()
        assert [n.text for n in path] == ["a\n", "b\n", f"Answer: {GOLD}"]
        assert path[-1].correct
        a, x = tree.root.children
        assert a.visits > 4 * x.visits
    assert stats.iterations == 30


def test_all_trees_expand_in_one_engine_call_per_iteration():
    config = SearchConfig(branching=2, c=1.0)
    engine, trees, run = make_search([f"q{i}" for i in range(5)], config)
    for iteration in range(1, 4):
        run.step()
        assert len(engine.step_calls) == iteration  # one call, however many trees
        prompts, texts, sampling = engine.step_calls[-1]
        assert prompts == [f"q{i}" for i in range(5)] and sampling.n == 2
        # and one rollout call for all their non-terminal children (iteration 3 makes only terminals)
        assert len(engine.rollout_calls) == min(iteration, 2)
    assert engine.rollout_calls[0][1] == ["a\n", "x\n"] * 5


def test_a_node_with_no_visible_step_is_verified_as_it_is():
    engine = ScriptedStepEngine()
    config = SearchConfig(branching=2, scale="01")
    values = RolloutValue(engine, reward, MCLabelConfig(num_rollouts=4, seed=1))
    [tree] = new_trees(engine, ["q"], [GOLD], config)
    run = Search(engine, [tree], config, values, reward)
    (w,) = tree.expand(tree.root, [StepSample("w\n", [ord("w"), 10], False)])
    tree.backup(w, 0.5)
    run.step()  # w is selected, its samples are whitespace only: it ends the response, verified wrong
    assert w.terminal and w.children == [] and w.correct is False and w.reward == 0.0
    assert (w.visits, w.value_sum) == (2, 0.5) and run.stats.nodes == 0
    assert engine.rollout_calls == []


def test_mixed_values_and_evaluator_count_check():
    class Fixed:
        def __init__(self, value):
            self.value = value

        def __call__(self, leaves):
            return [self.value] * len(leaves)

    mix = MixedValue(Fixed(1.0), Fixed(0.0), weight=0.25)
    assert mix([(None, None)] * 2) == [0.25, 0.25]
    config = SearchConfig(branching=2, scale="pm1")
    engine = ScriptedStepEngine()
    trees = new_trees(engine, ["q"], [GOLD], config)
    Search(engine, trees, config, mix, reward).step()
    assert [c.q for c in trees[0].root.children] == [-0.5, -0.5]  # p = 0.25 -> 2p - 1
    broken = Search(engine, new_trees(engine, ["q"], [GOLD], config), config, lambda leaves: [0.5], reward)
    with pytest.raises(ValueError, match="returned 1 values for 2 nodes"):
        broken.step()
