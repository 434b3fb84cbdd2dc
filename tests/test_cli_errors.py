"""Each documented bad input ends the command within seconds, exit status 1, with one line on stderr
that names what is wrong; `--debug` keeps the traceback, and a bug (not an llmac error) keeps it too.

Every case runs ``llmac.cli.main`` in its own process, as a user's shell would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmac import cli

REPO = Path(__file__).resolve().parents[1]
# Checked before any heavy import: no torch, no model (under a second on an idle machine; a missing
# model folder took 40 s before, a Hub lookup of 'tiny' 70 s). Generous for a loaded 2-core machine.
FAST_SECONDS = 30
# Checked after importing torch/transformers (a config's own check, a data file's rows): ~10 s idle.
IMPORT_SECONDS = 120


def run_llmac(
    args: list[str], cwd: Path, env: dict | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    environ = {k: v for k, v in os.environ.items() if k not in ("LLMAC_DEBUG", "LLMAC_VERBOSE")}
    environ.update(env or {})
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from llmac.cli import main; main()", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.perf_counter() - started


def assert_one_line(done: subprocess.CompletedProcess, *names: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "runs").mkdir()
    (tmp_path / "recipes").symlink_to(REPO / "recipes")
    return tmp_path


def test_missing_local_model_folder_is_one_line_at_once_and_never_asks_the_hub(workdir):
    done, seconds = run_llmac(
        ["eval", "--model_name_or_path", "runs/nope/sft", "--task", "arithmetic"],
        workdir,
        env={"HF_HUB_OFFLINE": "0"},
    )
    line = assert_one_line(done, "runs/nope/sft", "--model_name_or_path", "no such model folder")
    assert line.startswith("llmac eval: ")
    assert "Repo id" not in line and "huggingface" not in line.lower()
    assert seconds < FAST_SECONDS


@pytest.mark.parametrize(
    "path", ["./nope", "runs/nope", "nope/a/b", "~/llmac-no-such-folder/sft"], ids=lambda p: p
)
def test_every_local_looking_path_is_checked(workdir, path):
    done, seconds = run_llmac(["generate", "--model_name_or_path", path, "--output_dir", "out"], workdir)
    assert_one_line(done, path, "no such model folder")
    assert seconds < FAST_SECONDS


def test_a_folder_that_is_not_a_model(workdir):
    labels = workdir / "runs" / "labels"
    labels.mkdir()
    (labels / "state.json").write_text("{}")
    done, seconds = run_llmac(["critic", "train", "--init_from", "runs/labels", "--train_data", "x"], workdir)
    assert_one_line(done, "--init_from runs/labels", "no config.json", "state.json")
    assert seconds < FAST_SECONDS


def test_missing_paths_in_a_recipe_are_checked_too(workdir):
    recipe = workdir / "recipe.yaml"
    recipe.write_text("init_from: runs/demo/sft\ntrain_data: runs/demo/critic_labels\n")
    done, seconds = run_llmac(["critic", "train", "--config", str(recipe)], workdir)
    line = assert_one_line(done, f"{recipe}: init_from: runs/demo/sft", "no such model folder")
    assert line.startswith("llmac critic train: ")
    assert seconds < FAST_SECONDS


def test_a_flag_overrides_the_recipe_path_it_is_checked_in_place_of(workdir):
    recipe = workdir / "recipe.yaml"
    recipe.write_text("init_from: runs/nope/sft\ntrain_data: runs/nope/labels\n")
    (workdir / "labels.jsonl").write_text("{}\n")
    done, _ = run_llmac(
        [
            "critic",
            "train",
            "--config",
            str(recipe),
            "--init_from",
            "./actor",
            "--train_data",
            "labels.jsonl",
        ],
        workdir,
    )
    assert_one_line(done, "--init_from ./actor", "no such model folder")


def test_invalid_recipe_yaml(workdir):
    recipe = workdir / "broken.yaml"
    recipe.write_text("max_steps: [1\n")
    done, seconds = run_llmac(["sft", "--config", str(recipe)], workdir)
    assert_one_line(done, str(recipe), "not valid YAML")
    assert seconds < FAST_SECONDS


def test_missing_recipe_file(workdir):
    done, seconds = run_llmac(["sft", "--config", "recipes/sft/nope.yaml"], workdir)
    assert_one_line(done, "recipes/sft/nope.yaml", "recipe")
    assert seconds < FAST_SECONDS


def test_init_from_tiny_is_explained_offline(workdir):
    labels = workdir / "labels.jsonl"
    labels.write_text(json.dumps({"prompt": "1 + 1 =", "completions": ["1 + 1 = 2"], "labels": [1.0]}) + "\n")
    done, seconds = run_llmac(
        ["critic", "train", "--init_from", "tiny", "--train_data", str(labels), "--output_dir", "runs/c"],
        workdir,
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert_one_line(done, "init_from='tiny'", "actor folder")
    assert seconds < IMPORT_SECONDS


def test_unknown_command(workdir):
    done, seconds = run_llmac(["train-the-world"], workdir)
    assert_one_line(done, "'train-the-world'", "generate", "llmac --help")
    assert seconds < FAST_SECONDS


def test_unknown_critic_subcommand(workdir):
    done, _ = run_llmac(["critic", "grade"], workdir)
    assert_one_line(done, "llmac critic", "'grade'", "label")


@pytest.mark.parametrize(
    "args, names",
    [
        (["--num_samples", "many"], ["num_samples", "many"]),  # argparse's own type check
        (["--nmu_samples", "3"], ["--nmu_samples", "unknown field"]),  # a misspelt field
        (["--engine", "tpu"], ["engine", "tpu"]),  # a config's own check of its value
    ],
    ids=["bad-type", "unknown-field", "bad-choice"],
)
def test_bad_field_value(workdir, args, names):
    done, seconds = run_llmac(["eval", "--model_name_or_path", "some-org/some-model", *args], workdir)
    line = assert_one_line(done, *names)
    assert line.startswith("llmac eval: ")
    assert seconds < IMPORT_SECONDS


def test_required_field_missing(workdir):
    done, _ = run_llmac(["critic", "eval", "--labels", "x"], workdir)
    assert_one_line(done, "--critic", "required")


def test_a_bad_data_file_row_names_the_file_row_and_field(workdir, tiny_actor_dir):
    rows = [
        {"prompt": "1 + 1 =", "completions": ["1 + 1 = 2"], "labels": [1.0]},
        {"prompt": "2 + 2 =", "completions": ["2 + 2 = 4"]},  # no labels
    ]
    data = workdir / "labels.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done, seconds = run_llmac(
        ["critic", "train", "--init_from", str(tiny_actor_dir), "--train_data", str(data),
         "--output_dir", "runs/critic", "--max_steps", "1"],
        workdir,
    )  # fmt: skip
    assert_one_line(done, str(data), "2", "labels")
    assert seconds < IMPORT_SECONDS


def test_an_output_folder_llmac_did_not_write_is_refused_and_kept(workdir, tiny_actor_dir):
    mine = workdir / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("a week of work")
    done, seconds = run_llmac(["export", "--source", str(tiny_actor_dir), "--output_dir", str(mine)], workdir)
    assert_one_line(done, str(mine))
    assert (mine / "chapter1.tex").read_text() == "a week of work"
    assert seconds < IMPORT_SECONDS


def test_debug_keeps_the_traceback(workdir):
    for args, env in ((["--debug", "train-the-world"], {}), (["train-the-world"], {"LLMAC_DEBUG": "1"})):
        done, _ = run_llmac(args, workdir, env)
        assert done.returncode == 1
        assert "Traceback" in done.stderr and "UsageError" in done.stderr, done.stderr


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(argv):
        raise RuntimeError("a bug, not a bad input")

    monkeypatch.setitem(cli.COMMANDS, "broken", ("builtins", "broken", "raises"))
    monkeypatch.setattr("builtins.broken", broken, raising=False)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["broken"])


def test_help_lists_every_stage_of_the_demo(capsys):
    cli.main(["--help"])
    demo_line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("demo"))
    for stage in ("SFT", "MC step labels", "step critic", "PPO"):
        assert stage in demo_line


@pytest.mark.parametrize(
    "name, local",
    [
        ("runs/nope/sft", True),
        ("./sft", True),
        ("../shared/x", True),
        ("/abs/model", True),
        ("~/model", True),
        ("runs/x", True),  # llmac's own output root, even before it exists
        ("data.jsonl", True),
        ("Qwen/Qwen2.5-Math-1.5B-Instruct", False),
        ("gpt2", False),
        ("tiny", False),
    ],
)
def test_looks_local(name, local):
    from llmac.paths import looks_local

    assert looks_local(name) is local


def test_a_hub_id_whose_namespace_is_a_local_folder_is_local(tmp_path, monkeypatch):
    from llmac.paths import looks_local

    monkeypatch.chdir(tmp_path)
    assert not looks_local("models/sft")
    (tmp_path / "models").mkdir()
    assert looks_local("models/sft")
