"""``llmac critique inspect``: one self-contained HTML page with each critique beside its solution.

Input: a turns dataset (:data:`llmac.critique.refine.TURN_COLUMNS`), as ``llmac critique refine`` writes
to ``<output_dir>/turns`` and ``llmac critique self-train`` to ``iteration-<k>/turns``. Each turn is a
section: the question, then one table row per solution step with the step on the left and, beside it,
what the critique says of it (its own derivation or explanation) and its verdict. The critic's first
flagged step and the oracle's first wrong step (arithmetic problems: :mod:`llmac.critique.oracle`) are
marked; below come the final verdicts, the critique as written and the refined solution.

The page loads nothing (it opens offline); a checkbox (or the URL hash ``#misjudged``) shows only the
turns whose final verdict disagrees with the solution's correctness.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from llmac.config import option, parse_config
from llmac.critique.format import get_critique_format
from llmac.critique.oracle import judge_solution
from llmac.critique.refine import TURN_COLUMNS
from llmac.data.loading import DataError, load_records
from llmac.errors import ConfigError, OutputError
from llmac.files import write_text_atomically
from llmac.html_filter import filter_script
from llmac.outputs import check_file_output, overwrite_field
from llmac.steps import DEFAULT_DELIMITER, clean_steps
from llmac.validation import check_fields

COMMAND = "critique inspect"
# What marks a page this command wrote (so --overwrite never replaces another file).
PAGE_MARK = '<meta name="generator" content="llmac critique inspect">'

# -------------------------------------------------------------------------- per-step critique notes

_VERBOSE_HEADER = re.compile(r"^[ \t*#]*Step\s+(\d+)\s*:", re.IGNORECASE | re.MULTILINE)
_VERBOSE_FINAL = re.compile(r"Correctness of the final answer\s*:", re.IGNORECASE)
_VERBOSE_VERDICT_LINE = re.compile(r"^\s*Correctness of the step\s*:.*$", re.IGNORECASE | re.MULTILINE)
_COMPACT_FINAL = re.compile(r"^\s*Answer:\s*[rw]\s*$")


def _compact_notes(critique: str, num_steps: int) -> list[str]:
    lines = [line.strip() for line in critique.splitlines() if line.strip()]
    if lines and _COMPACT_FINAL.match(lines[-1]):
        lines = lines[:-1]
    notes = [line[:-2].rstrip() if line[-2:] in (" r", " w") else line for line in lines]
    return (notes + [""] * num_steps)[:num_steps]


def _verbose_notes(critique: str, num_steps: int) -> list[str]:
    final = _VERBOSE_FINAL.search(critique)
    body_end = final.start() if final else len(critique)
    headers = list(_VERBOSE_HEADER.finditer(critique, 0, body_end))
    notes = [""] * num_steps
    for i, header in enumerate(headers):
        index = int(header.group(1)) - 1
        if not 0 <= index < num_steps or notes[index]:
            continue  # a step the solution lacks, or a second block on one step: the parser's malformed
        block_end = headers[i + 1].start() if i + 1 < len(headers) else body_end
        block = critique[header.end() : block_end]
        lines = _VERBOSE_VERDICT_LINE.sub("", block).strip().splitlines()
        notes[index] = "\n".join(
            line.strip() for line in lines[1:] if line.strip()
        )  # after the restated step
    return notes


_NOTE_READERS = {"compact": _compact_notes, "verbose": _verbose_notes}


def step_notes(critique: str, critique_format: str, num_steps: int) -> list[str]:
    """What ``critique`` says of each of ``num_steps`` steps besides its verdict ("" when nothing): the
    compact format's derivation, the verbose format's explanation. Never raises on the critique's text."""
    get_critique_format(critique_format)  # a ConfigError naming the known formats
    reader = _NOTE_READERS.get(critique_format)
    return reader(critique, num_steps) if reader else [""] * num_steps


def oracle_first_error(question: str, solution: str, gold: str) -> int | None:
    """The arithmetic oracle's first wrong step (-1: none), or None when the question is not a chain sum."""
    try:
        return judge_solution(question, solution, gold or None).first_error
    except DataError:
        return None


# ---------------------------------------------------------------------------------------- records


def turn_records(
    turns, critique_format: str, delimiter: str = DEFAULT_DELIMITER, max_turns: int | None = None
) -> list[dict]:
    """One inspector record per turn (the first ``max_turns``): the turn's columns, the solution's
    ``steps``, the critique's ``notes`` per step and the oracle's first wrong step (``oracle_error``)."""
    missing = [c for c in TURN_COLUMNS if c not in turns.column_names]
    if missing:
        raise DataError(
            f"critique inspect: the data has no {missing} column(s); give a turns dataset "
            "(`llmac critique refine`'s <output_dir>/turns or `llmac critique self-train`'s iteration-<k>/turns)"
        )
    rows = turns.select(range(min(max_turns or len(turns), len(turns))))
    records = []
    for row in rows:
        steps = clean_steps(row["solution"], delimiter)
        record = {column: row[column] for column in TURN_COLUMNS}
        record["steps"] = steps
        record["notes"] = step_notes(row["critique"], critique_format, len(steps))
        record["oracle_error"] = oracle_first_error(row["question"], row["solution"], row["answer"])
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------- page

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 72em; padding: 1em; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1em; }
.turn { border: 1px solid #ddd; border-radius: 6px; margin: 1em 0; padding: 0.5em 1em; }
.turn h2 { font-size: 1em; margin: 0.3em 0; }
.meta { color: #555; font-size: 0.9em; }
.question { white-space: pre-wrap; font-weight: 600; margin: 0.5em 0; }
table.steps { border-collapse: collapse; width: 100%; }
table.steps th { text-align: left; font-size: 0.85em; color: #555; border-bottom: 1px solid #ccc; }
table.steps td { padding: 0.25em 0.5em; vertical-align: top; white-space: pre-wrap; font-family: monospace; }
td.num { color: #777; width: 2em; }
td.text, td.note { width: 42%; }
tr.judged-right td.verdict { color: #176; font-weight: bold; }
tr.judged-wrong td.verdict { color: #b00; font-weight: bold; }
tr.judged-wrong td.note { background: #fde8e8; }
tr.flagged td { border-top: 3px solid #b00; border-bottom: 3px solid #b00; }
tr.oracle-error td.text { background: #fff1c2; }
.badge { display: inline-block; font-family: system-ui, sans-serif; font-size: 0.75em; padding: 0 0.4em;
  margin-left: 0.5em; border-radius: 4px; color: #fff; background: #b00; }
.badge.oracle { background: #8a6d00; }
.final { margin: 0.5em 0; }
.ok { color: #176; font-weight: bold; }
.bad { color: #b00; font-weight: bold; }
pre { background: #f6f6f6; padding: 0.4em; margin: 0.3em 0; white-space: pre-wrap; }
"""

_JS = filter_script("misjudged", "turn", "misjudged")


def _correctness(value: bool | None, what: str) -> str:
    if value is None:
        return f"{what}: unknown"
    return f'{what}: <span class="{"ok" if value else "bad"}">{"correct" if value else "wrong"}</span>'


def _verdict_word(verdict: bool | None) -> str:
    return "missing" if verdict is None else ("Correct" if verdict else "Wrong")


def _step_number(index: int | None) -> str:
    return "unknown" if index is None else ("none" if index < 0 else str(index + 1))


def _check_record(i: int, record: Mapping[str, Any]) -> None:
    for field in ("question", "steps", "step_verdicts", "notes", "critique"):
        if field not in record:
            raise ValueError(f"critique inspector record {i}: missing field {field!r}")
    steps = len(record["steps"])
    for field in ("step_verdicts", "notes"):
        if len(record[field]) != steps:
            raise ValueError(f"critique inspector record {i}: {steps} steps but {len(record[field])} {field}")


def _turn_html(i: int, record: Mapping[str, Any]) -> tuple[str, bool, bool]:
    """HTML of one turn, whether a step is flagged and whether the final verdict is misjudged."""
    verdicts = list(record["step_verdicts"])
    flagged = next((t for t, ok in enumerate(verdicts) if not ok), -1)
    oracle = record.get("oracle_error")
    verdict, correct = record.get("verdict"), record.get("correct")
    misjudged = correct is not None and verdict != bool(correct)  # a missing verdict is misjudged
    classes = "turn" + (" has-flag" if flagged >= 0 else "") + (" misjudged" if misjudged else "")
    attrs = (
        f'data-index="{i}" data-first-flagged="{flagged}" '
        f'data-oracle-error="{"" if oracle is None else oracle}" data-verdict="{_verdict_word(verdict)}"'
    )
    title = " · ".join(
        f"{label} {int(record[key]) + 1}"
        for label, key in (("problem", "problem_index"), ("sample", "sample_index"), ("round", "round"))
        if record.get(key) is not None
    )
    meta = [
        f"critic's final verdict: <b>{_verdict_word(verdict)}</b>",
        _correctness(correct, "solution"),
        f"first flagged step: {_step_number(flagged)}",
        f"oracle's first wrong step: {_step_number(oracle)}",
    ]
    if record.get("num_malformed"):
        meta.append(f"malformed verdicts: {int(record['num_malformed'])}")
    if record.get("answer"):
        meta.append(f"gold: {escape(str(record['answer']))}")
    lines = [
        f'<section class="{classes}" {attrs}>',
        f"<h2>Turn {i + 1}{' · ' + title if title else ''}</h2>",
        f'<div class="meta">{" · ".join(meta)}</div>',
        f'<div class="question">{escape(str(record["question"]))}</div>',
        '<table class="steps"><thead><tr><th>#</th><th>solution step</th><th>critique of the step</th>'
        "<th>verdict</th></tr></thead><tbody>",
    ]
    for t, (step, note, ok) in enumerate(zip(record["steps"], record["notes"], verdicts, strict=True)):
        row_classes = ["step", "judged-right" if ok else "judged-wrong"]
        badges = ""
        if t == flagged:
            row_classes.append("flagged")
            badges += '<span class="badge flag">first flagged step</span>'
        if t == oracle:
            row_classes.append("oracle-error")
            badges += '<span class="badge oracle">oracle: first wrong step</span>'
        lines.append(
            f'<tr class="{" ".join(row_classes)}" data-step="{t}" data-verdict="{"right" if ok else "wrong"}">'
            f'<td class="num">{t + 1}</td><td class="text">{escape(str(step))}{badges}</td>'
            f'<td class="note">{escape(str(note))}</td><td class="verdict">{"right" if ok else "wrong"}</td></tr>'
        )
    lines.append("</tbody></table>")
    lines.append(
        f'<div class="final">critique of the final answer: <b>{_verdict_word(verdict)}</b></div>'
        f"<details><summary>the critique as written</summary>"
        f'<pre class="critique">{escape(str(record["critique"]))}</pre></details>'
    )
    if record.get("refined"):
        lines.append(
            f'<div class="refined">refined solution ({_correctness(record.get("refined_correct"), "refinement")}):'
            f'<pre class="refined-solution">{escape(str(record.get("refined_solution", "")))}</pre></div>'
        )
    lines.append("</section>")
    return "\n".join(lines), flagged >= 0, misjudged


def render_critique_page(records: Sequence[Mapping[str, Any]], title: str = "Critique inspector") -> str:
    """The page as a string (records as :func:`turn_records` makes them)."""
    for i, record in enumerate(records):
        _check_record(i, record)
    parts = [_turn_html(i, record) for i, record in enumerate(records)]
    num_flagged = sum(flagged for _, flagged, _ in parts)
    num_misjudged = sum(misjudged for _, _, misjudged in parts)
    judged = [r for r in records if r.get("correct") is not None]
    summary = f"{len(records)} critiques · {num_flagged} flag a step"
    if judged:
        summary += f" · final verdict right on {len(judged) - num_misjudged} of {len(judged)}"
    refined = [r for r in records if r.get("refined")]
    if refined:
        fixed = sum(bool(r.get("refined_correct")) for r in refined)
        summary += f" · {len(refined)} refined, {fixed} of them correct after"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            PAGE_MARK,
            f"<title>{escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head><body>",
            f"<header><h1>{escape(title)}</h1>",
            f'<p class="summary" data-turns="{len(records)}" data-flagged="{num_flagged}" '
            f'data-misjudged="{num_misjudged}">{summary}</p>',
            '<p><label><input type="checkbox" id="only-misjudged"> show only turns whose final verdict is '
            "wrong</label></p>",
            "</header>",
            "<main>",
            *(html for html, _, _ in parts),
            "</main>",
            f"<script>{_JS}</script>",
            "</body></html>",
            "",
        ]
    )


def write_critique_page(
    path: str | Path, records: Sequence[Mapping[str, Any]], title: str = "Critique inspector"
) -> Path:
    """Write the page for ``records`` to ``path`` atomically; returns the path."""
    return write_text_atomically(Path(path), render_critique_page(records, title))


# ---------------------------------------------------------------------------------------- command


@dataclass
class CritiqueInspectConfig:
    """Which turns the page shows, and where it goes."""

    data: str = option("", "A turns dataset: `llmac critique refine`'s <output_dir>/turns, or self-train's.")
    output: str = option("runs/critique/inspect.html", "The HTML file to write.")
    critique_format: str = option("compact", "The critiques' layout: 'compact' or 'verbose'.")
    delimiter: str = option(DEFAULT_DELIMITER, "Step delimiter of the solutions.")
    max_turns: int = option(200, "Show at most this many turns (the first ones).", range="[1, inf)")
    first_round_only: bool = option(False, "Show only each solution's first critique (round 0).")
    title: str = option("Critique inspector", "The page's title.")
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
        get_critique_format(self.critique_format)


def check_page_output(path: Path, overwrite: bool, sources) -> None:
    """An existing file at ``path`` is replaced only if this command wrote it and ``overwrite`` is set."""
    check_file_output(path, COMMAND, sources)
    if not path.exists():
        return
    if PAGE_MARK not in path.read_bytes()[:4096].decode("utf-8", "replace"):
        raise OutputError(
            f"{path} exists and is not a page `llmac {COMMAND}` wrote: it will not replace it, even with "
            "--overwrite; choose another --output"
        )
    if not overwrite:
        raise OutputError(f"{path} holds an earlier critique inspector page: pass --overwrite to replace it")


def main(argv: Sequence[str] | None = None) -> Path:
    (config,) = parse_config([CritiqueInspectConfig], argv, prog=f"llmac {COMMAND}")
    if not config.data:
        raise ConfigError(f"llmac {COMMAND}: --data is required (a turns dataset folder)")
    output = Path(config.output)
    check_page_output(output, config.overwrite, sources=[config.data])
    turns = load_records(config.data)
    if config.first_round_only and "round" in turns.column_names:
        turns = turns.filter(lambda row: row["round"] == 0)
    records = turn_records(turns, config.critique_format, config.delimiter, config.max_turns)
    path = write_critique_page(output, records, config.title)
    print(f"llmac {COMMAND}: wrote {len(records)} critiques beside their solutions to {path.resolve()}")
    return path
