"""The critique -> refine loop with scripted engines: an oracle critic and a scripted actor."""

from __future__ import annotations

import pytest

from llmac.critique.format import get_critique_format
from llmac.critique.metrics import refine_metrics
from llmac.critique.oracle import exact_answer_rewards as exact_reward
from llmac.critique.oracle import judge_solution
from llmac.critique.refine import (
    DEFAULT_REWRITE_TEMPLATE,
    TURN_COLUMNS,
    RefineConfig,
    critique_and_refine,
    final_correct_groups,
    final_solutions,
)
from llmac.engines import Completion
from llmac.errors import ConfigError

QUESTION = "38 - 57 + 10 ="
RIGHT = "38 - 57 = -19\n-19 + 10 = -9\nAnswer: -9"
LATE = "38 - 57 = -19\n-19 + 10 = -8\nAnswer: -8"
SLIP = "38 - 57 = -21\n-21 + 10 = -11\nAnswer: -11"


class PlainTokenizer:
    chat_template = None  # format_prompt gives the plain text


def _completion(text: str) -> list[Completion]:
    return [Completion([1], [0.0], "stop", text=text)]


class OracleCritic:
    """Critiques a compact-format request (question, solution steps, blank line) with the exact oracle,
    or returns ``override[solution]`` when set."""

    delimiter = "\n"

    def __init__(self, override: dict[str, str] | None = None) -> None:
        self.tokenizer, self.override, self.calls = PlainTokenizer(), override or {}, []

    def generate(self, prompts, sampling):
        self.calls.append(list(prompts))
        groups = []
        for prompt in prompts:
            question, _, solution = prompt.rstrip("\n").partition("\n")
            if solution in self.override:
                groups.append(_completion(self.override[solution]))
                continue
            judged = judge_solution(question, solution)
            groups.append(
                _completion(get_critique_format("compact").render(judged.judgements(), judged.answer_correct))
            )
        return groups


class ScriptedActor:
    """Continues a prefix (or answers a rewrite request) with the next scripted text for it."""

    delimiter = "\n"

    def __init__(self, script: dict[str, list[str]]) -> None:
        self.tokenizer, self.script, self.calls = PlainTokenizer(), script, []

    def continue_from(self, prompts, prefixes, sampling):
        self.calls.append(("continue_from", list(prompts), list(prefixes), sampling))
        return [_completion(self.script[prefix].pop(0)) for prefix in prefixes]

    def generate(self, prompts, sampling):
        self.calls.append(("generate", list(prompts), None, sampling))
        return [_completion(self.script[prompt].pop(0)) for prompt in prompts]


def test_regenerate_from_the_first_flagged_step_over_rounds():
    actor = ScriptedActor(
        {
            "38 - 57 = -19\n": ["-19 + 10 = -9\nAnswer: -9"],  # LATE: step 2 flagged, fixed at once
            # SLIP: step 1 flagged; the first retry slips again, the second is right
            "": ["38 - 57 = -20\n-20 + 10 = -10\nAnswer: -10", "38 - 57 = -19\n-19 + 10 = -9\nAnswer: -9"],
        }
    )
    critic = OracleCritic()
    turns = critique_and_refine(
        actor, critic, [QUESTION] * 3, [RIGHT, LATE, SLIP], RefineConfig(rounds=3, refine_temperature=0.0), ["-9"] * 3, exact_reward
    )
    assert turns.column_names == list(TURN_COLUMNS)
    rows = turns.to_list()
    # refined solutions are critiqued again next round; accepted ones leave the loop
    assert [(r["sample_index"], r["round"]) for r in rows] == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (2, 2)]
    right, late, slip0, late1, slip1, slip2 = rows
    assert not right["refined"] and right["refined_solution"] == RIGHT and right["verdict"] is True
    assert late["first_flagged"] == 1 and late["step_verdicts"] == [True, False, False]
    assert late["refined_solution"] == RIGHT and late["refined_correct"] and not late["correct"]
    assert slip0["first_flagged"] == 0 and slip0["refined_solution"].startswith("38 - 57 = -20")
    assert slip1["solution"] == slip0["refined_solution"] and slip1["refined_solution"] == RIGHT
    assert not late1["refined"] and late1["verdict"] is True
    assert slip2["solution"] == RIGHT and not slip2["refined"]
    assert all(r["num_malformed"] == 0 and r["problem_index"] == 0 for r in rows)
    # one batched critic call and one batched actor call per round; the accepted solution left the loop
    assert [len(c) for c in critic.calls] == [3, 2, 1]
    assert [(c[0], c[2]) for c in actor.calls] == [
        ("continue_from", ["38 - 57 = -19\n", ""]),
        ("continue_from", [""]),
    ]
    assert all(c[1] == [QUESTION] * len(c[2]) and c[3].temperature == 0 for c in actor.calls)
    assert [text for *_, text in final_solutions(turns)] == [RIGHT, RIGHT, RIGHT]
    assert final_correct_groups(turns) == ([[True, False, False]], [[True, True, True]])
    # metrics of round 0 from the turns
    first = [r for r in rows if r["round"] == 0]
    m = refine_metrics([r["correct"] for r in first], [r["refined_correct"] for r in first])
    assert (m.acc, m.acc_refine, m.i_to_c, m.c_to_i) == (
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
        pytest.approx(1 / 3),
        0,
    )


def test_a_malformed_critique_counts_as_rejection_and_regenerates_everything():
    actor = ScriptedActor({"": [RIGHT]})
    critic = OracleCritic({RIGHT: "garbage"})
    turns = critique_and_refine(actor, critic, [QUESTION], [RIGHT], RefineConfig(rounds=1))
    row = turns[0]
    assert row["verdict"] is None and row["first_flagged"] == 0 and row["num_malformed"] == 4
    assert row["refined"] and row["correct"] is None  # no reward function given


def test_wrong_final_verdict_without_a_flagged_step_regenerates_the_last_step():
    actor = ScriptedActor({"38 - 57 = -19\n-19 + 10 = -9\n": ["Answer: -9"]})
    critic = OracleCritic({RIGHT: "a r\nb r\nc r\nAnswer: w"})
    row = critique_and_refine(actor, critic, [QUESTION], [RIGHT], RefineConfig())[0]
    assert row["first_flagged"] == -1 and row["verdict"] is False and row["refined_solution"] == RIGHT


def test_rewrite_follows_the_critique_through_the_template():
    critique = "38 - 57 = -19 w\n-19 + 10 = -9 w\nAnswer: -9 w\nAnswer: w"
    request = DEFAULT_REWRITE_TEMPLATE.format(question=QUESTION, solution=SLIP, critique=critique)
    actor = ScriptedActor({request: [RIGHT]})
    turns = critique_and_refine(
        actor,
        OracleCritic(),
        [QUESTION, "1 + 2 ="],
        [SLIP, "1 + 2 = 3\nAnswer: 3"],
        RefineConfig(mode="rewrite"),
        ["-9", "3"],
        exact_reward,
    )
    assert turns["critique"][0] == critique
    assert turns["refined_solution"] == [RIGHT, "1 + 2 = 3\nAnswer: 3"]
    assert turns["problem_index"] == [0, 1] and turns["refined_correct"] == [True, True]
    assert final_correct_groups(turns) == ([[False], [True]], [[True], [True]])
    assert actor.calls[0][0] == "generate" and actor.calls[0][1] == [request]


def test_config_and_input_checks():
    with pytest.raises(ConfigError):
        RefineConfig(mode="edit")
    with pytest.raises(ConfigError, match="unknown critique format"):
        RefineConfig(critique_format="long")
    with pytest.raises(ValueError, match="2 questions but 1 solutions"):
        critique_and_refine(ScriptedActor({}), OracleCritic(), [QUESTION] * 2, [RIGHT], RefineConfig())
    with pytest.raises(ValueError, match="one gold answer per question"):
        critique_and_refine(
            ScriptedActor({}), OracleCritic(), [QUESTION], [RIGHT], RefineConfig(), None, exact_reward
        )
