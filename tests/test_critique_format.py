"""Critique formats: rendering, parsing hand-written critiques, malformed ones never crash."""

from __future__ import annotations

import pytest

from llmac.critique.format import (
    CritiqueVerdicts,
    StepJudgement,
    critique_format_names,
    get_critique_format,
)
from llmac.errors import ConfigError

JUDGED = [
    StepJudgement("38 - 57 = -19", "38 - 57 = -19", True),
    StepJudgement("-19 + 10 = -8", "-19 + 10 = -9", False),
    StepJudgement("Answer: -8", "Answer: -9", False),
]


def test_registry_has_both_builtins_and_rejects_unknown_names():
    assert {"compact", "verbose"} <= set(critique_format_names())  # other modules may register more
    with pytest.raises(ConfigError, match="unknown critique format 'long'"):
        get_critique_format("long")


def test_compact_render_is_the_documented_layout():
    text = get_critique_format("compact").render(JUDGED, final_correct=False)
    assert text == "38 - 57 = -19 r\n-19 + 10 = -9 w\nAnswer: -9 w\nAnswer: w"


def test_verbose_render_is_the_papers_layout():
    text = get_critique_format("verbose").render(JUDGED, final_correct=False)
    blocks = text.split("\n\n")
    assert blocks[0].splitlines()[:2] == ["Step 1: 38 - 57 = -19", "Correctness of the step: Correct"]
    assert blocks[1].splitlines() == [
        "Step 2: -19 + 10 = -8",
        "Correctness of the step: Wrong",
        "Explanation: It should read -19 + 10 = -9.",
    ]
    assert blocks[-1] == "Correctness of the final answer: Wrong"


@pytest.mark.parametrize("name", ["compact", "verbose"])
@pytest.mark.parametrize("final", [True, False])
def test_parse_inverts_render(name, final):
    fmt = get_critique_format(name)
    parsed = fmt.parse(fmt.render(JUDGED, final), num_steps=3)
    assert parsed == CritiqueVerdicts((True, False, False), final, True, 0)
    assert parsed.first_flagged == 1


def test_first_flagged_is_minus_one_when_all_steps_pass():
    assert CritiqueVerdicts((True, True), True, True, 0).first_flagged == -1
    assert CritiqueVerdicts((), False, False, 1).first_flagged == -1


def test_compact_hand_written_and_malformed():
    fmt = get_critique_format("compact")
    # unknown mark on step 2, extra step line (4th line for a 3-step solution), blank lines ignored
    parsed = fmt.parse("1 + 2 = 3 r\n\n3 + 4 = 7 ok\n7 - 1 = 6 r\n6 r\nAnswer: r\n", num_steps=3)
    assert parsed.steps == (True, False, True)
    assert (parsed.final, parsed.final_found, parsed.num_malformed) == (True, True, 2)
    assert parsed.first_flagged == 1


def test_compact_truncated_critique_has_missing_verdicts_counted_as_wrong():
    parsed = get_critique_format("compact").parse("1 + 2 = 3 r\n3 + 4 =", num_steps=3)
    # line 2 has no verdict, step 3 and the final verdict are missing
    assert parsed == CritiqueVerdicts((True, False, False), False, False, 3)


@pytest.mark.parametrize("text", ["", "   \n\n", "Answer: r", "rrrr", "Answer: x\n"])
def test_compact_garbage_never_crashes(text):
    parsed = get_critique_format("compact").parse(text, num_steps=2)
    assert parsed.steps == (False, False)
    assert parsed.num_malformed >= 2


def test_compact_final_line_without_steps():
    parsed = get_critique_format("compact").parse("Answer: r", num_steps=2)
    assert parsed == CritiqueVerdicts((False, False), True, True, 2)


def test_verbose_hand_written_with_markdown_and_case():
    text = (
        "**Step 1:** 2 + 2 = 4\nCorrectness of the step: correct.\nExplanation: fine\n\n"
        "Step 2: 4 * 3 = 11\nCorrectness of the step: **Wrong**\nExplanation: 4 * 3 = 12\n\n"
        "Correctness of the final answer: Wrong"
    )
    parsed = get_critique_format("verbose").parse(text, num_steps=2)
    assert parsed == CritiqueVerdicts((True, False), False, True, 0)


def test_verbose_malformed_cases_are_counted():
    text = (
        "Step 1: a\nCorrectness of the step: Maybe\n"  # unreadable verdict
        "Step 2: b\nExplanation: no verdict line\n"  # missing verdict
        "Step 3: c\nCorrectness of the step: Correct\n"
        "Step 3: c again\nCorrectness of the step: Wrong\n"  # duplicate: the first counts
        "Step 9: d\nCorrectness of the step: Correct\n"  # no such step
    )
    parsed = get_critique_format("verbose").parse(text, num_steps=4)
    assert parsed.steps == (False, False, True, False)
    assert not parsed.final and not parsed.final_found
    # no readable verdict on steps 1, 2, 4 (3) + duplicate 3 + step 9 + missing final verdict
    assert parsed.num_malformed == 6
    assert parsed.first_flagged == 0


def test_verbose_last_final_verdict_wins_and_steps_after_it_are_ignored():
    text = (
        "Step 1: x\nCorrectness of the step: Correct\n"
        "Correctness of the final answer: Wrong\nCorrectness of the final answer: Correct\n"
        "Step 2: y\nCorrectness of the step: Correct\n"
    )
    parsed = get_critique_format("verbose").parse(text, num_steps=2)
    assert parsed == CritiqueVerdicts((True, False), True, True, 1)


def test_prompts_hold_question_and_steps():
    steps = ["1 + 2 = 3", "Answer: 3"]
    assert get_critique_format("compact").prompt("1 + 2 =", steps) == "1 + 2 =\n1 + 2 = 3\nAnswer: 3\n\n"
    verbose = get_critique_format("verbose").prompt("1 + 2 =", steps)
    assert "Question: 1 + 2 =" in verbose and "Step 2: Answer: 3" in verbose
