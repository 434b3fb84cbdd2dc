"""The critique inspector: per-step notes read from critiques, and the page headless Chromium shows of a
turns dataset the critique -> refine loop wrote (each critique beside its solution, flags marked)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_critic_inspector import parse

from llmac.critique.format import get_critique_format
from llmac.critique.inspector import main, render_critique_page, step_notes, turn_records
from llmac.critique.oracle import exact_answer_rewards, judge_solution
from llmac.critique.refine import RefineConfig, critique_and_refine
from llmac.engines import Completion
from llmac.errors import OutputError

QUESTION = "38 - 57 + 10 ="
RIGHT = "38 - 57 = -19\n-19 + 10 = -9\nAnswer: -9"
LATE = "38 - 57 = -19\n-19 + 10 = -8\nAnswer: -8"  # the oracle's first wrong step: 2
# The critic misjudges this one: it flags step 3 of a right solution and rejects the answer.
SECOND = "4 + 5 - 1 ="
SECOND_RIGHT = "4 + 5 = 9\n9 - 1 = 8\nAnswer: 8"
MISJUDGED = "4 + 5 = 9 r\n9 - 1 = 8 r\nAnswer: <b>8</b> w\nAnswer: w"


class PlainTokenizer:
    chat_template = None


def _one(text: str) -> list[Completion]:
    return [Completion([1], [0.0], "stop", text=text)]


class Critic:
    """The exact oracle's compact critiques, or a scripted one for a given solution."""

    delimiter = "\n"
    tokenizer = PlainTokenizer()

    def generate(self, prompts, sampling):
        out = []
        for prompt in prompts:
            question, _, solution = prompt.rstrip("\n").partition("\n")
            if solution == SECOND_RIGHT:
                out.append(_one(MISJUDGED))
                continue
            judged = judge_solution(question, solution)
            out.append(
                _one(get_critique_format("compact").render(judged.judgements(), judged.answer_correct))
            )
        return out


class Actor:
    """Continues LATE's kept prefix to the right answer; refines the misjudged one into a wrong one."""

    delimiter = "\n"
    tokenizer = PlainTokenizer()

    def continue_from(self, prompts, prefixes, sampling):
        script = {"38 - 57 = -19\n": "-19 + 10 = -9\nAnswer: -9", "4 + 5 = 9\n9 - 1 = 8\n": "Answer: 7"}
        return [_one(script[prefix]) for prefix in prefixes]


@pytest.fixture(scope="module")
def turns_dir(tmp_path_factory) -> Path:
    turns = critique_and_refine(
        Actor(),
        Critic(),
        [QUESTION, QUESTION, SECOND],
        [RIGHT, LATE, SECOND_RIGHT],
        RefineConfig(),
        ["-9", "-9", "8"],
        exact_answer_rewards,
    )
    folder = tmp_path_factory.mktemp("inspect") / "turns"
    turns.save_to_disk(str(folder))
    return folder


def test_step_notes_of_both_formats_and_of_broken_critiques():
    assert step_notes("38 - 57 = -19 w\n\n-19 + 10 = -9 w\nAnswer: -9 w\nAnswer: w", "compact", 3) == [
        "38 - 57 = -19",
        "-19 + 10 = -9",
        "Answer: -9",
    ]
    assert step_notes("garbage", "compact", 2) == ["garbage", ""]  # a missing note is empty, no crash
    assert step_notes("", "compact", 1) == [""]
    verbose = (
        "Step 1: 38 - 57 = -21\nCorrectness of the step: Wrong\nExplanation: 38 - 57 = -19, not -21.\n\n"
        "Step 1: again\nCorrectness of the step: Correct\n\nStep 9: no such step\n\n"
        "Correctness of the final answer: Wrong"
    )
    assert step_notes(verbose, "verbose", 2) == ["Explanation: 38 - 57 = -19, not -21.", ""]


def test_records_carry_the_critique_beside_each_step_and_the_oracle(turns_dir):
    from datasets import load_from_disk

    records = turn_records(load_from_disk(str(turns_dir)), "compact")
    assert [r["steps"] for r in records[:2]] == [RIGHT.split("\n"), LATE.split("\n")]
    late = records[1]
    assert late["notes"] == ["38 - 57 = -19", "-19 + 10 = -9", "Answer: -9"]  # the oracle's derivations
    assert (late["first_flagged"], late["oracle_error"], late["verdict"]) == (1, 1, False)
    misjudged = records[2]
    assert misjudged["notes"][2] == "Answer: <b>8</b>" and misjudged["step_verdicts"] == [True, True, False]
    assert (misjudged["oracle_error"], misjudged["correct"], misjudged["refined_correct"]) == (
        -1,
        True,
        False,
    )
    english = load_from_disk(str(turns_dir)).map(lambda r: {"question": "What is two plus two?"})
    assert {r["oracle_error"] for r in turn_records(english, "compact")} == {
        None
    }  # not a chain sum: no oracle, no crash
    with pytest.raises(ValueError, match="1 steps but 2 notes"):
        render_critique_page([{**records[0], "steps": ["a"], "step_verdicts": [True], "notes": ["x", "y"]}])


def _chromium(*args: str, profile: Path) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium not found: run scripts/setup.sh (it installs it with apt)")
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def test_browser_shows_each_critique_beside_its_solution(turns_dir, tmp_path, capsys):
    page = tmp_path / "page.html"
    main(["--data", str(turns_dir), "--output", str(page)])
    assert "wrote 3 critiques" in capsys.readouterr().out
    url = page.as_uri()

    dom = parse(_chromium("--virtual-time-budget=2000", "--dump-dom", url, profile=tmp_path / "p1"))
    assert dom.find("body")[0]["attrs"]["data-filter"] == "all"  # the page's script ran
    turns = dom.find("section", "turn")
    assert [t["attrs"]["data-verdict"] for t in turns] == ["Correct", "Wrong", "Wrong"]
    assert [t["attrs"]["data-first-flagged"] for t in turns] == ["-1", "1", "2"]
    assert [t["attrs"]["data-oracle-error"] for t in turns] == ["-1", "1", "-1"]
    cells = {(e["attrs"].get("class"), e["text"]) for e in dom.find("td")}
    # each solution step and the critique's note on it sit in one table row, side by side
    rows = dom.find("tr", "step")
    assert [sum(r["solution"] == str(i) for r in rows) for i in range(3)] == [3, 3, 3]
    late_rows = rows[3:6]
    assert [r["text"].split("\n")[0] for r in late_rows] == [
        "138 - 57 = -1938 - 57 = -19right",
        "2-19 + 10 = -8first flagged steporacle: first wrong step-19 + 10 = -9wrong",
        "3Answer: -8Answer: -9wrong",
    ]
    assert ("note", "Answer: <b>8</b>") in cells  # the critique's text stayed text
    flagged = dom.find("tr", "flagged")
    assert [f["attrs"]["data-step"] for f in flagged] == ["1", "2"]
    assert [o["attrs"]["data-step"] for o in dom.find("tr", "oracle-error")] == ["1"]
    refined = dom.find("pre", "refined-solution")
    assert [r["text"] for r in refined] == [RIGHT, SECOND_RIGHT.replace("Answer: 8", "Answer: 7")]
    summary = dom.find("p", "summary")[0]
    assert (summary["attrs"]["data-turns"], summary["attrs"]["data-misjudged"]) == ("3", "1")
    assert (
        "final verdict right on 2 of 3" in summary["text"]
        and "2 refined, 1 of them correct" in summary["text"]
    )
    # the page's own script only, and two <b> per turn (its verdicts): the critique's <b> stayed text
    assert len(dom.find("script")) == 1 and len(dom.find("b")) == 6

    dom = parse(
        _chromium("--virtual-time-budget=2000", "--dump-dom", url + "#misjudged", profile=tmp_path / "p2")
    )
    hidden = [t["attrs"]["data-index"] for t in dom.find("section", "turn") if "hidden" in t["attrs"]]
    assert hidden == ["0", "1"]  # only the misjudged right solution stays in view


def test_output_rules(turns_dir, tmp_path):
    page = tmp_path / "page.html"
    main(["--data", str(turns_dir), "--output", str(page), "--first_round_only", "true", "--max_turns", "2"])
    with pytest.raises(OutputError, match="pass --overwrite"):
        main(["--data", str(turns_dir), "--output", str(page)])
    main(["--data", str(turns_dir), "--output", str(page), "--overwrite", "true"])
    foreign = tmp_path / "notes.html"
    foreign.write_text("<!DOCTYPE html><p>mine</p>")
    with pytest.raises(OutputError, match="not a page"):
        main(["--data", str(turns_dir), "--output", str(foreign), "--overwrite", "true"])
    assert foreign.read_text() == "<!DOCTYPE html><p>mine</p>"
