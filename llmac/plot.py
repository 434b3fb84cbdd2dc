"""``llmac plot``: PNG training curves of an RL run, read from its ``metrics.jsonl``.

``llmac plot RUN_DIR [--out DIR] [--metrics a,b,c]`` writes ``<metric>.png`` per numeric metric plus
``overview.png`` (a grid of the main curves); ``llmac plot RUN_A RUN_B ... --compare METRIC [--x AXIS]
--out file.png`` draws one line per run. Figures are drawn on matplotlib's Agg canvas (no display, no
pyplot state) and every PNG is written atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmac.errors import InputNotFoundError
from llmac.files import write_atomically

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
# Counters used as x axes, not plotted as curves of their own.
AXES = ("iteration", "completions")
# The curves of overview.png, in grid order, when the run has them.
MAIN_METRICS = (
    "reward",
    "accuracy",
    "eval_accuracy",
    "kl",
    "clip_fraction",
    "value_loss",
    "explained_variance",
    "entropy",
    "response_length",
)
# Logged only every few iterations: drawn with markers so isolated points stay visible.
SPARSE_METRICS = frozenset({"eval_accuracy"})

DPI = 100
FIGSIZE = (6.0, 4.0)  # inches of a single-metric or comparison figure: 600 x 400 pixels
PANEL_SIZE = (4.0, 3.0)  # inches of one overview panel
OVERVIEW_COLUMNS = 3

Curve = tuple[str, list[float], list[float]]  # (label, xs, ys)


# ------------------------------------------------------------------------------------------ reading


def metrics_file(path: str | Path) -> Path:
    """The metrics file of a run folder, or ``path`` itself when it is not a folder."""
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl`` (``path``: the run folder or the file), one per line.

    An unparseable last line (the writer was killed mid-write) is skipped with a warning; an
    unparseable line elsewhere is a ValueError naming the file and line number.
    """
    file = metrics_file(path)
    if not file.is_file():
        raise InputNotFoundError(
            f"{file}: not found; a run folder must contain {METRICS_FILE} (one JSON object per iteration)"
        )
    # errors="replace": a write cut inside a multi-byte character must only spoil the last line.
    # split("\n") rather than splitlines(): JSON strings may hold U+2028 and other line separators.
    lines = file.read_text(encoding="utf-8", errors="replace").split("\n")
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            if index == len(numbered) - 1:
                logger.warning(
                    "%s:%d: skipped the unparseable last line (truncated write?): %s", file, number, err
                )
                break
            raise ValueError(f"{file}:{number}: unparseable metrics line: {err}") from err
        records.append(record)
    return records


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None for null, NaN, infinities, booleans and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def series(records: Sequence[dict], metric: str, x: str = "iteration") -> tuple[list[float], list[float]]:
    """The (x, metric) points of ``records`` in file order; records missing either value are skipped."""
    xs, ys = [], []
    for record in records:
        x_value, y_value = _number(record.get(x)), _number(record.get(metric))
        if x_value is not None and y_value is not None:
            xs.append(x_value)
            ys.append(y_value)
    return xs, ys


def available_metrics(records: Sequence[dict], x: str = "iteration") -> list[str]:
    """Sorted names of the metrics with at least one numeric point against ``x`` (axes excluded)."""
    names = {key for record in records for key in record if key not in AXES}
    return sorted(name for name in names if series(records, name, x)[0])


# ------------------------------------------------------------------------------------------ drawing


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("llmac plot needs matplotlib: pip install 'llmac[plot]'") from err
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _draw(ax: Any, xs: list[float], ys: list[float], metric: str, **kwargs: Any) -> None:
    # A lone point of a line plot is invisible without a marker.
    marker = "o" if metric in SPARSE_METRICS or len(xs) == 1 else None
    ax.plot(xs, ys, marker=marker, markersize=4, **kwargs)


def metric_figure(records: Sequence[dict], metric: str, x: str = "iteration") -> Figure:
    """One metric of a run against ``x``."""
    figure = _new_figure(*FIGSIZE)
    ax = figure.add_subplot()
    xs, ys = series(records, metric, x)
    _draw(ax, xs, ys, metric)
    ax.set(title=metric, xlabel=x, ylabel=metric)
    ax.grid(alpha=0.3)
    return figure


def overview_figure(records: Sequence[dict], metrics: Sequence[str], x: str = "iteration") -> Figure:
    """A grid of ``metrics`` against ``x``, ``OVERVIEW_COLUMNS`` panels a row."""
    columns = min(OVERVIEW_COLUMNS, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = _new_figure(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows)
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, metric in zip(axes, metrics, strict=False):
        xs, ys = series(records, metric, x)
        _draw(ax, xs, ys, metric)
        ax.set(title=metric, xlabel=x)
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_axis_off()
    return figure


def compare_figure(curves: Sequence[Curve], metric: str, x: str) -> Figure:
    """One line per ``(label, xs, ys)`` curve, with a legend of the labels."""
    figure = _new_figure(*FIGSIZE)
    ax = figure.add_subplot()
    for label, xs, ys in curves:
        _draw(ax, xs, ys, metric, label=label)
    ax.set(title=f"{metric} vs {x}", xlabel=x, ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` to ``path`` atomically: a temporary file in the same folder, then os.replace."""
    return write_atomically(path, lambda stream: figure.savefig(stream, format="png", dpi=DPI))


def _filename(metric: str) -> str:
    return re.sub(r"[^\w.-]", "_", metric) + ".png"


# --------------------------------------------------------------------------------------------- runs


def plot_run(
    run_dir: str | Path, out_dir: str | Path | None = None, metrics: Sequence[str] | None = None
) -> list[Path]:
    """Write ``<metric>.png`` per numeric metric of a run and ``overview.png``; the written paths, sorted.

    ``out_dir`` defaults to ``<run_dir>/plots``; ``metrics`` restricts the plots (and the overview) to
    those names.
    """
    file = metrics_file(run_dir)
    records = read_metrics(file)
    available = available_metrics(records)
    if metrics is None:
        chosen = available
    else:
        unknown = [name for name in metrics if name not in available]
        if unknown:
            raise ValueError(
                f"unknown metric(s) {', '.join(unknown)} in {file}; available: {', '.join(available) or 'none'}"
            )
        chosen = list(dict.fromkeys(metrics))
    if not chosen:
        raise ValueError(f"{file}: no numeric metric to plot in {len(records)} line(s)")
    out = file.parent / "plots" if out_dir is None else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [save_png(metric_figure(records, metric), out / _filename(metric)) for metric in chosen]
    main_curves = [metric for metric in MAIN_METRICS if metric in chosen]
    if main_curves:
        paths.append(save_png(overview_figure(records, main_curves), out / "overview.png"))
    return sorted(paths)


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Legend labels: each run's folder name, or its path where two runs share a name."""
    folders = [metrics_file(run_dir).resolve().parent for run_dir in run_dirs]
    names = [folder.name for folder in folders]
    return [
        str(folder) if names.count(name) > 1 else name for folder, name in zip(folders, names, strict=True)
    ]


def compare_runs(
    run_dirs: Sequence[str | Path],
    out_path: str | Path,
    metric: str = "eval_accuracy",
    x: str = "completions",
) -> Path:
    """One PNG with ``metric`` against ``x`` of every run, a line each (legend: folder name).

    A run without any point is left out with a warning; ``out_path`` may be an existing folder, which
    then receives ``compare_<metric>.png``.
    """
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run folder")
    curves: list[Curve] = []
    seen: set[str] = set()
    for run_dir, label in zip(run_dirs, run_labels(run_dirs), strict=True):
        records = read_metrics(run_dir)
        seen.update(available_metrics(records, x))
        xs, ys = series(records, metric, x)
        if xs:
            curves.append((label, xs, ys))
        else:
            logger.warning(
                "%s: no %s against %s; left out of the comparison", metrics_file(run_dir), metric, x
            )
    if not curves:
        raise ValueError(
            f"no run has {metric!r} against {x!r}; metrics against {x!r}: {', '.join(sorted(seen)) or 'none'}"
        )
    out = Path(out_path)
    if out.is_dir():
        out = out / f"compare_{_filename(metric)}"
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_png(compare_figure(curves, metric, x), out)


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmac plot",
        description="PNG training curves of RL runs, read from their metrics.jsonl.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folder(s) holding metrics.jsonl")
    parser.add_argument(
        "--out", help="output folder (default RUN_DIR/plots); with --compare, the PNG file to write"
    )
    parser.add_argument("--metrics", help="comma-separated metrics to plot (default: every numeric one)")
    parser.add_argument("--compare", metavar="METRIC", help="draw METRIC of every run in one figure")
    parser.add_argument("--x", metavar="AXIS", help="x axis of --compare (default: completions)")
    return parser


def main(argv: Sequence[str] | None = None) -> list[Path]:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.compare:
        if args.metrics:
            parser.error("--metrics does not apply with --compare")
        if not args.out:
            parser.error("--compare needs --out FILE.png")
        paths = [compare_runs(args.runs, args.out, metric=args.compare, x=args.x or "completions")]
    else:
        if len(args.runs) > 1:
            parser.error("several runs need --compare METRIC")
        if args.x:
            parser.error("--x applies only with --compare")
        metrics = [name.strip() for name in args.metrics.split(",") if name.strip()] if args.metrics else None
        paths = plot_run(args.runs[0], args.out, metrics)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
