"""A self-contained HTML page to look at what a step critic thinks of solutions.

Each step is coloured by its critic value (red 0 -> green 1) and the first step the critic flags
(value < threshold) is marked. The page has no external resources, so it opens offline; a checkbox
(or the URL hash ``#flagged``) shows only the solutions with a flagged step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from llmac.critic.metrics import first_error_from_labels, first_error_index
from llmac.files import write_text_atomically
from llmac.html_filter import filter_script

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 60em; padding: 1em; color: #222; }
header { border-bottom: 1px solid #ccc; margin-bottom: 1em; }
.solution { border: 1px solid #ddd; border-radius: 6px; margin: 1em 0; padding: 0.5em 1em; }
.solution h2 { font-size: 1em; margin: 0.3em 0; }
.meta { color: #555; font-size: 0.9em; }
.question { white-space: pre-wrap; font-weight: 600; margin: 0.5em 0; }
.steps { padding-left: 2em; }
.step { white-space: pre-wrap; margin: 0.25em 0; padding: 0.25em 0.5em; border-left: 6px solid; }
.step .value { font-family: monospace; font-weight: bold; margin-right: 0.6em; }
.step .label { font-family: monospace; color: #555; margin-left: 0.6em; }
.step.flagged { outline: 3px solid #b00; }
.badge { display: inline-block; font-size: 0.8em; padding: 0 0.4em; margin-right: 0.5em; border-radius: 4px;
  color: #fff; background: #b00; }
.badge.reference { background: #555; }
"""

_JS = filter_script("flagged", "solution", "has-flag")


def _colour(value: float) -> tuple[str, str]:
    """Background and border colours of a step value: hue 0 (red) at 0 to 120 (green) at 1."""
    hue = round(120 * min(max(value, 0.0), 1.0))
    return f"hsl({hue}, 75%, 88%)", f"hsl({hue}, 70%, 38%)"


def _check_record(i: int, record: Mapping[str, Any]) -> None:
    for field in ("question", "steps", "values"):
        if field not in record:
            raise ValueError(f"inspector record {i}: missing field {field!r}")
    steps, values, labels = record["steps"], record["values"], record.get("labels")
    if len(steps) != len(values):
        raise ValueError(f"inspector record {i}: {len(steps)} steps but {len(values)} values")
    if labels is not None and len(labels) != len(steps):
        raise ValueError(f"inspector record {i}: {len(steps)} steps but {len(labels)} labels")
    bad = next((t for t, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise ValueError(f"inspector record {i}: value of step {bad} is {values[bad]}")


def _solution_html(i: int, record: Mapping[str, Any], threshold: float) -> tuple[str, int]:
    """HTML of one solution and the index of its first flagged step (-1 when none)."""
    steps, values, labels = record["steps"], record["values"], record.get("labels")
    flagged = first_error_index(values, threshold)
    reference = first_error_from_labels(labels) if labels is not None else -1
    meta = [f"first flagged step: {flagged + 1 if flagged >= 0 else 'none'}"]
    if labels is not None:
        meta.append(f"first MC error: {reference + 1 if reference >= 0 else 'none'}")
    for field in ("reward", "gold"):
        if record.get(field) is not None:
            meta.append(f"{field}: {escape(str(record[field]))}")
    reward = record.get("reward")
    attrs = f'data-index="{i}" data-first-flagged="{flagged}"'
    if reward is not None:
        attrs += f' data-reward="{escape(str(reward))}"'
    lines = [
        f'<section class="solution{" has-flag" if flagged >= 0 else ""}" {attrs}>',
        f"<h2>Solution {i + 1}</h2>",
        f'<div class="meta">{" · ".join(meta)}</div>',
        f'<div class="question">{escape(str(record["question"]))}</div>',
        '<ol class="steps">',
    ]
    for t, (step, value) in enumerate(zip(steps, values, strict=True)):
        background, border = _colour(value)
        classes = (
            "step" + (" flagged" if t == flagged else "") + (" reference-error" if t == reference else "")
        )
        badges = '<span class="badge">first flagged step</span>' if t == flagged else ""
        if t == reference:
            badges += '<span class="badge reference">first MC error</span>'
        label = f'<span class="label">MC {labels[t]:.2f}</span>' if labels is not None else ""
        lines.append(
            f'<li class="{classes}" data-step="{t}" data-value="{float(value)!r}" '
            f'style="background: {background}; border-color: {border}">'
            f'<span class="value">{value:.3f}</span>{badges}<span class="text">{escape(str(step))}</span>{label}</li>'
        )
    lines += ["</ol>", "</section>"]
    return "\n".join(lines), flagged


def render_inspector(
    records: Sequence[Mapping[str, Any]], title: str = "Step critic inspector", threshold: float = 0.5
) -> str:
    """The page as a string; see :func:`write_inspector` for the record fields."""
    for i, record in enumerate(records):
        _check_record(i, record)
    parts = [_solution_html(i, record, threshold) for i, record in enumerate(records)]
    num_flagged = sum(flagged >= 0 for _, flagged in parts)
    summary = f"{len(records)} solutions · {num_flagged} flagged (a step value &lt; {threshold:g})"
    rewards = [r["reward"] for r in records if r.get("reward") is not None]
    if rewards:
        summary += f" · {sum(r > 0 for r in rewards)} of {len(rewards)} correct"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head><body>",
            f"<header><h1>{escape(title)}</h1>",
            f'<p class="summary" data-solutions="{len(records)}" data-flagged="{num_flagged}">{summary}</p>',
            '<p><label><input type="checkbox" id="only-flagged"> show only flagged solutions</label></p>',
            "</header>",
            "<main>",
            *(html for html, _ in parts),
            "</main>",
            f"<script>{_JS}</script>",
            "</body></html>",
            "",
        ]
    )


def write_inspector(
    path: str | Path,
    records: Sequence[Mapping[str, Any]],
    title: str = "Step critic inspector",
    threshold: float = 0.5,
) -> Path:
    """Write the inspector page for ``records`` to ``path`` (atomically) and return the path.

    Each record has ``question`` (str), ``steps`` (list of step strings) and ``values`` (critic value
    per step), and optionally ``reward`` (> 0 = correct), ``gold`` (reference answer) and ``labels``
    (MC soft or hard label per step; the first step labelled 0 is marked as the reference error).
    """
    path = Path(path)
    page = render_inspector(records, title=title, threshold=threshold)
    return write_text_atomically(path, page)
