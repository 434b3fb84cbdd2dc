"""Expert iteration: the completions a round is charged (counted by hand on a scripted engine), the
budget it never passes, and one real round on the tiny actor that makes its verified solutions likelier."""

from __future__ import annotations

import math
import re

import pytest
import torch

from llmac.critic.labelling import MCLabelConfig
from llmac.engines import Completion, SamplingConfig
from llmac.engines.hf import HFEngine
from llmac.mcts.expert_iteration import (
    CountingEngine,
    ExpertIterationConfig,
    RolloutSolutions,
    build_trees,
    run_expert_iteration,
    sft_rows,
)
from llmac.mcts.search import SearchConfig
from llmac.mcts.values import RolloutValue

WORKED = "1 + 2 = 3\n"
# prefix -> the candidate steps (text, ends the response); sample k is candidate k % 2.
STEPS = {"": [(WORKED, False), ("Answer: 3", True)], WORKED: [("Answer: 3", True), ("Answer: 4", True)]}


class CharTokenizer:
    chat_template = None

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def completion(text: str, finish: str) -> Completion:
    return Completion([ord(c) for c in text], [0.0] * len(text), finish, text=text)


class ScriptedEngine:
    """Scripted steps; every rollout reaches the gold answer. Records the seeds of the step calls."""

    delimiter = "\n"

    def __init__(self) -> None:
        self.tokenizer, self.step_seeds = CharTokenizer(), []

    def sample_step(self, prompts, prefixes, sampling: SamplingConfig):
        self.step_seeds.append(sampling.seed)
        groups = []
        for prefix in prefixes:
            candidates = STEPS[self.tokenizer.decode(prefix)]
            picks = [candidates[k % len(candidates)] for k in range(sampling.n)]
            groups.append([completion(text, "stop" if ends else "step") for text, ends in picks])
        return groups

    def continue_from(self, prompts, prefixes, sampling: SamplingConfig):
        return [[completion("Answer: 3", "stop") for _ in range(sampling.n)] for _ in prefixes]


def reward(texts, golds):
    return [float(t.rstrip().endswith(f"Answer: {g}")) for t, g in zip(texts, golds, strict=True)]


def answer_given(texts, golds):
    """The real round's verifier: the 80-step tiny actor rarely adds right, so any final answer passes
    (the loop is under test, not the actor; the verifier is pluggable like every reward)."""
    return [float(re.search(r"Answer: -?\d+\s*$", t) is not None) for t in texts]


SEARCH = SearchConfig(iterations=2, branching=2, max_children=2, max_depth=4, seed=100)


def build(budget=0, max_questions=None, questions=3, found=None):
    engine = CountingEngine(ScriptedEngine())

    def evaluator(first):
        if found is None:
            return RolloutValue(engine, reward, MCLabelConfig(num_rollouts=3, seed=first))
        harvest = RolloutSolutions(engine, reward, MCLabelConfig(num_rollouts=3, seed=first))
        harvest.found = found
        return harvest

    built = build_trees(engine, ["1 + 2 ="] * questions, ["3"] * questions, SEARCH, evaluator, reward,
                        start=0, trees_per_batch=2, rollouts_per_node=3, budget=budget,
                        max_questions=max_questions)  # fmt: skip
    return engine, built


def test_a_round_is_charged_every_step_and_rollout():
    # Per tree, by hand. Iteration 1 expands the root: 2 sampled steps -> the worked step (valued by 3
    # rollouts, all correct: q = +1) and "Answer: 3" (a verified terminal, q = +1). Iteration 2: equal
    # UCT scores and priors, so the first child (the worked step) is expanded: 2 sampled steps -> two
    # terminals, verified, no rollout. 4 steps + 3 rollouts = 7 completions a tree, 21 for 3 trees.
    engine, built = build(max_questions=3)
    assert len(built.trees) == 3 and built.next_question == 3
    assert (built.count.step_completions, built.count.rollout_completions) == (12, 9)
    assert built.count.completions == 21 == engine.count.completions
    steps_tokens = 3 * (len(WORKED) + len("Answer: 3") + len("Answer: 3") + len("Answer: 4"))
    assert built.count.generated_tokens == steps_tokens + 9 * len("Answer: 3")
    # Trees 0-1 are one batch, tree 2 the next: its step seeds start 2 problems x 2 iterations x 2 further.
    assert engine.engine.step_seeds == [100, 100 + 2 * 2, 108, 108 + 1 * 2]
    for tree in built.trees:
        assert [n.text for n in tree.root.children] == [WORKED, "Answer: 3"]
        assert [n.text for n in tree.root.children[0].children] == ["Answer: 3", "Answer: 4"]


def test_a_round_never_spends_past_its_budget():
    # Batch 1 (2 trees): iteration 1 costs at most 2 x (2 steps + 2 children x 3 rollouts) = 16 and
    # spends 10; iteration 2 would cost at most 16 more: over a budget of 16, so the round stops there.
    _, built = build(budget=16)
    assert built.count.completions == 10 and len(built.trees) == 2 and built.next_question == 2
    # A budget of 40 fits both batches whole (14 + 7 = 21; batch 2's worst cases are 8 and 8).
    _, built = build(budget=40)
    assert built.count.completions == 21 and len(built.trees) == 3
    # Under the first iteration's worst case nothing is searched.
    _, built = build(budget=15)
    assert built.count.completions == 0 and built.trees == [] and built.next_question == 0


def test_sft_rows_keep_the_best_solutions_of_each_problem():
    found = []
    _, built = build(max_questions=3, found=found)
    # Each tree's worked step was valued by 3 rollouts, all verified correct: kept as solutions.
    assert [(built.trees.index(tree), text) for tree, text in found] == [
        (t, "1 + 2 = 3\nAnswer: 3") for t in (0, 0, 0, 1, 1, 1, 2, 2, 2)
    ]
    every = sft_rows(built.trees, per_question=4, rollout_solutions=found)
    assert sorted(set(every["solution"])) == ["1 + 2 = 3\nAnswer: 3", "Answer: 3"]  # rollouts were no news
    assert len(every) == 6 and sorted(every["tree_index"]) == [0, 0, 1, 1, 2, 2]
    assert set(every["source"]) == {"tree"}
    one = sft_rows(built.trees, per_question=1)  # equal values and visits: the first found, the worked one
    assert list(one["solution"]) == ["1 + 2 = 3\nAnswer: 3"] * 3 and list(one["tree_index"]) == [0, 1, 2]
    # A new rollout solution ranks after the terminals (value 1, no visits), so it needs room.
    extra = [(built.trees[1], "1 + 2 = 3\n3 + 0 = 3\nAnswer: 3 ")]
    three = sft_rows(built.trees, per_question=3, rollout_solutions=extra)
    rows = [
        (t, s, src) for t, s, src in zip(three["tree_index"], three["solution"], three["source"], strict=True)
    ]
    assert (1, "1 + 2 = 3\n3 + 0 = 3\nAnswer: 3", "rollout") in rows and len(rows) == 7
    assert len(sft_rows(built.trees, per_question=2, rollout_solutions=extra)) == 6


class CountedHFEngine(HFEngine):
    """An independent count of the sequences the engine generated, below the engine's public calls."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outputs = 0

    def _run(self, prompts, sampling, stop_at_delimiter):
        groups = super()._run(prompts, sampling, stop_at_delimiter)
        self.outputs += sum(map(len, groups))
        return groups


def sequence_logprob(model, tokenizer, prompt: str, solution: str) -> float:
    """log p(solution | prompt) under ``model``, summed over the solution's tokens."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + tokenizer(solution, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logprobs[len(prompt_ids) - 1 :].sum())


@pytest.fixture(scope="module")
def one_round(tiny_actor_dir, tmp_path_factory):
    from llmac.config import ModelConfig
    from llmac.data.tasks import TaskConfig

    engine = CountedHFEngine(tiny_actor_dir, dtype="float32", batch_size=256)
    task = TaskConfig(task="arithmetic_mixed", num_train=8, min_terms=2, max_terms=2, max_digits=1)
    search = SearchConfig(iterations=3, branching=3, max_children=3, max_depth=4, max_step_tokens=16, seed=3)
    out = tmp_path_factory.mktemp("ei") / "run"
    config = ExpertIterationConfig(output_dir=str(out), rounds=1, questions_per_round=8, trees_per_batch=8,
                                   num_rollouts=1, rollout_max_new_tokens=24, sft_learning_rate=1e-3,
                                   sft_epochs=4, sft_batch_size=8,
                                   reward="test_mcts_expert_iteration:answer_given")  # fmt: skip
    seen = []
    results = run_expert_iteration(ModelConfig(model_name_or_path=str(tiny_actor_dir)), task, search, config,
                                   engine, after_round=seen.append)  # fmt: skip
    return engine, results, seen, out


def test_one_round_trains_the_actor_on_its_verified_solutions(one_round, tiny_actor_dir):
    from datasets import load_from_disk

    from llmac.data.loading import format_prompt
    from llmac.models import load_actor, load_tokenizer

    engine, results, seen, out = one_round
    (result,) = results
    assert seen == results and result.questions == 8 and result.sft_rows >= 4
    assert result.completions == engine.outputs == result.step_completions + result.rollout_completions
    rows = load_from_disk(str(out / "round-1" / "solutions"))
    assert len(rows) == result.sft_rows and answer_given(rows["solution"], rows["answer"]) == [1.0] * len(
        rows
    )
    tokenizer = load_tokenizer(tiny_actor_dir)
    before, after = load_actor(tiny_actor_dir).eval(), load_actor(result.actor).eval()
    gains = [
        sequence_logprob(after, tokenizer, format_prompt(tokenizer, q), s)
        - sequence_logprob(before, tokenizer, format_prompt(tokenizer, q), s)
        for q, s in zip(rows["question"], rows["solution"], strict=True)
    ]
    assert sum(gains) / len(gains) > 1.0  # nats per solution: SFT made its own verified solutions likelier
    # The engine now holds the SFT'd actor's weights.
    weights = dict(after.named_parameters())
    assert all(torch.equal(p, weights[name]) for name, p in engine.model.named_parameters())
    assert not math.isnan(result.seconds) and (out / "rounds.jsonl").read_text().count("\n") == 1


def test_iterate_command_refuses_a_bad_setup_in_one_line(tmp_path):
    from llmac.errors import ConfigError
    from llmac.mcts.cli import main

    with pytest.raises(ConfigError, match="must be an actor folder"):
        main(["iterate", "--model_name_or_path", "tiny", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="leaf='critic' needs --critic"):
        main(["iterate", "--leaf", "critic", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
