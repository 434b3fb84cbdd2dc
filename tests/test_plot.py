"""``llmac plot``: reading metrics.jsonl, the plotted points, the PNG files and the command line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402

from llmac.plot import (  # noqa: E402
    compare_figure,
    compare_runs,
    main,
    metric_figure,
    overview_figure,
    plot_run,
    read_metrics,
    run_labels,
    series,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# An evaluation-only line before training, a null reward, a NaN kl, a non-numeric field, a blank line,
# and a last line cut mid-write.
METRICS = (
    '{"iteration": 0, "completions": 0, "eval_accuracy": 0.25}\n'
    '{"iteration": 1, "completions": 128, "reward": 0.1, "accuracy": 0.1, "kl": NaN, "value_loss": 0.5,'
    ' "entropy": 0.9, "response_length": 40.0, "note": "warm-up", "resumed": true}\n'
    "\n"
    '{"iteration": 2, "completions": 256, "reward": null, "accuracy": 0.3, "kl": 0.004, "value_loss": 0.3,'
    ' "entropy": 0.8, "response_length": 35.5}\n'
    '{"iteration": 3, "completions": 384, "reward": 0.5, "accuracy": 0.5, "kl": 0.006, "value_loss": 0.2,'
    ' "entropy": 0.7, "response_length": 31.0, "eval_accuracy": 0.6}\n'
    '{"iteration": 4, "completions": 512, "reward": 0.6, "acc'
)
METRIC_NAMES = ["accuracy", "entropy", "eval_accuracy", "kl", "response_length", "reward", "value_loss"]


def write_run(folder: Path, text: str = METRICS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text(text, encoding="utf-8")
    return folder


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) in pixels of a PNG, after checking its signature."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path).shape[:2]


@pytest.fixture
def run(tmp_path) -> Path:
    return write_run(tmp_path / "ppo_run")


def test_read_metrics_skips_a_truncated_last_line(run, caplog):
    with caplog.at_level(logging.WARNING, logger="llmac.plot"):
        records = read_metrics(run)
    assert [record["iteration"] for record in records] == [0, 1, 2, 3]
    assert "metrics.jsonl:6" in caplog.text  # line 3 is blank, so the cut line is line 6
    assert read_metrics(run / "metrics.jsonl") == records


def test_read_metrics_rejects_a_broken_middle_line(tmp_path):
    lines = METRICS.split("\n")
    lines[3] = lines[3][:40]  # cut the iteration-2 line, which has lines after it
    folder = write_run(tmp_path / "broken", "\n".join(lines))
    with pytest.raises(ValueError, match=r"metrics\.jsonl:4: unparseable"):
        read_metrics(folder)


def test_read_metrics_rejects_a_non_object_line(tmp_path):
    folder = write_run(tmp_path / "list", '[1, 2]\n{"iteration": 1}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:1: .*JSON object"):
        read_metrics(folder)


def test_read_metrics_missing_file_names_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"empty/metrics\.jsonl: not found; a run folder must contain"
    ):
        read_metrics(tmp_path / "empty")


def test_series_skips_missing_null_and_non_finite_values(run):
    records = read_metrics(run)
    assert series(records, "reward") == ([1.0, 3.0], [0.1, 0.5])  # absent at 0, null at 2
    assert series(records, "kl") == ([2.0, 3.0], [0.004, 0.006])  # NaN at 1
    assert series(records, "eval_accuracy") == ([0.0, 3.0], [0.25, 0.6])
    assert series(records, "eval_accuracy", x="completions") == ([0.0, 384.0], [0.25, 0.6])
    assert series(records, "note") == ([], [])
    assert series(records, "resumed") == ([], [])  # a boolean is not a number
    assert series(records, "no_such_metric") == ([], [])


def test_figures_hold_the_series(run):
    records = read_metrics(run)
    line = metric_figure(records, "eval_accuracy").axes[0].lines[0]
    assert line.get_xydata().tolist() == [[0.0, 0.25], [3.0, 0.6]]
    assert line.get_marker() == "o"  # sparse metric: markers
    line = metric_figure(records, "accuracy").axes[0].lines[0]
    assert line.get_xydata().tolist() == [[1.0, 0.1], [2.0, 0.3], [3.0, 0.5]]
    assert line.get_marker() in (None, "None", "")

    overview = overview_figure(records, ["reward", "kl"])
    assert [ax.get_title() for ax in overview.axes] == ["reward", "kl"]
    assert overview.axes[1].lines[0].get_xydata().tolist() == [[2.0, 0.004], [3.0, 0.006]]

    compared = compare_figure(
        [("a", [0.0, 1.0], [0.2, 0.4]), ("b", [0.0], [0.3])], "eval_accuracy", "completions"
    )
    ax = compared.axes[0]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["a", "b"]
    assert ax.lines[1].get_xydata().tolist() == [[0.0, 0.3]]
    assert ax.get_xlabel() == "completions"


def test_plot_run_writes_one_png_per_metric_and_an_overview(run):
    paths = plot_run(run)
    plots = run / "plots"
    assert paths == sorted(plots / f"{name}.png" for name in [*METRIC_NAMES, "overview"])
    for name in METRIC_NAMES:
        assert image_size(plots / f"{name}.png") == (400, 600)  # 6 x 4 inches at 100 dpi
    # 7 main curves -> 3 columns x 3 rows of 4 x 3 inch panels
    assert image_size(plots / "overview.png") == (900, 1200)
    assert sorted(path.name for path in plots.iterdir()) == sorted(
        path.name for path in paths
    )  # no temp files


def test_plot_run_restricted_metrics_and_out_dir(run, tmp_path):
    paths = plot_run(run / "metrics.jsonl", tmp_path / "out" / "curves", metrics=["kl", "entropy", "kl"])
    out = tmp_path / "out" / "curves"
    assert paths == [out / "entropy.png", out / "kl.png", out / "overview.png"]
    assert image_size(out / "overview.png") == (300, 800)  # two panels side by side


def test_plot_run_unknown_metric_lists_the_available_ones(run):
    with pytest.raises(ValueError, match="unknown metric.*rewards.*available: " + ", ".join(METRIC_NAMES)):
        plot_run(run, metrics=["rewards"])
    assert not (run / "plots").exists()


def test_compare_runs_draws_one_png(tmp_path, caplog):
    run_a = write_run(tmp_path / "run_a")
    run_b = write_run(tmp_path / "run_b", '{"iteration": 0, "completions": 0, "eval_accuracy": 0.3}\n')
    run_c = write_run(tmp_path / "run_c", '{"iteration": 0, "completions": 0, "reward": 0.3}\n')
    with caplog.at_level(logging.WARNING, logger="llmac.plot"):
        out = compare_runs([run_a, run_b, run_c], tmp_path / "race" / "race.png")
    assert out == tmp_path / "race" / "race.png"
    assert image_size(out) == (400, 600)
    assert "run_c" in caplog.text and "left out" in caplog.text
    with pytest.raises(ValueError, match="no run has 'kl' against 'completions'.*eval_accuracy, reward"):
        compare_runs([run_b, run_c], tmp_path / "kl.png", metric="kl")


def test_run_labels_disambiguate_shared_names(tmp_path):
    first, second = write_run(tmp_path / "x" / "seed1"), write_run(tmp_path / "y" / "seed1")
    other = write_run(tmp_path / "z" / "seed2")
    assert run_labels([first, other / "metrics.jsonl"]) == ["seed1", "seed2"]
    assert run_labels([first, second, other]) == [str(first.resolve()), str(second.resolve()), "seed2"]


def test_main_plots_a_run(run, tmp_path, capsys):
    paths = main([str(run), "--out", str(tmp_path / "cli"), "--metrics", "reward, eval_accuracy"])
    assert paths == [tmp_path / "cli" / name for name in ["eval_accuracy.png", "overview.png", "reward.png"]]
    assert capsys.readouterr().out.split() == [str(path) for path in paths]


def test_main_compares_runs(tmp_path, capsys):
    run_a, run_b = write_run(tmp_path / "run_a"), write_run(tmp_path / "run_b")
    out = tmp_path / "race.png"
    assert main([str(run_a), str(run_b), "--compare", "accuracy", "--x", "iteration", "--out", str(out)]) == [
        out
    ]
    assert capsys.readouterr().out.strip() == str(out)
    assert image_size(out) == (400, 600)
    with pytest.raises(SystemExit):
        main([str(run_a), str(run_b)])  # several runs without --compare
    with pytest.raises(SystemExit):
        main([str(run_a), "--compare", "accuracy"])  # no --out
