"""``llmac critique``: its subcommands are listed, bad invocations fail in one line, and ``eval`` /
``refine`` measure what they say on the tiny actor."""

from __future__ import annotations

import json

import pytest

from llmac.cli import main as llmac_main
from llmac.critique.cli import SUBCOMMANDS

ENGINE = ["--engine", "hf", "--engine_dtype", "float32"]
TASK = ["--task", "arithmetic", "--num_train", "64", "--num_eval", "12"]


def test_critique_lists_its_subcommands(capsys):
    llmac_main(["critique", "--help"])
    out = capsys.readouterr().out
    names = ("sft", "train", "refine", "eval", "self-train", "inspect")
    assert all(name in out for name in names) and set(SUBCOMMANDS) == set(names)
    llmac_main(["--help"])
    assert "critique" in capsys.readouterr().out


def test_missing_inputs_fail_in_one_line_naming_the_field(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        llmac_main(
            ["critique", "train", "--actor", str(tmp_path / "no_actor"), "--model_name_or_path", "tiny"]
        )
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmac critique train:") and "actor" in err and "\n" not in err
    with pytest.raises(SystemExit):
        llmac_main(["critique", "train", "--model_name_or_path", "tiny"])  # no --actor at all
    err = capsys.readouterr().err.strip()
    assert "actor: give the frozen actor's model folder" in err and "\n" not in err


def test_eval_with_a_critic_that_writes_no_verdict(tiny_actor_dir, tmp_path):
    """The actor as its own critic writes solutions, not critiques: every verdict is missing, so Acc@Dis
    is 0 and every solution is regenerated from scratch; greedy, that gives the same greedy answers."""
    from llmac.critique.evaluate import eval_main, refine_main

    args = [
        "--actor",
        str(tiny_actor_dir),
        "--critic",
        str(tiny_actor_dir),
        *ENGINE,
        *TASK,
        "--samples_per_problem",
        "3",
        "--solution_max_new_tokens",
        "48",
        "--critique_max_new_tokens",
        "32",
        "--refine_max_new_tokens",
        "48",
    ]
    metrics = eval_main([*args, "--output_dir", str(tmp_path / "eval")])
    assert metrics["discrimination"]["acc_dis"] == 0.0
    assert metrics["discrimination"]["num_missing_verdicts"] == 36 and metrics["malformed_fraction"] == 1.0
    greedy = metrics["refine"]["greedy"]
    assert greedy["num"] == 12 and greedy["acc_refine"] == greedy["acc"] and greedy["c_to_i"] == 0.0
    best = metrics["best_of_n"]
    assert best["n"] == 3 and 0.0 <= best["random"] <= best["pass_at_n"] <= 1.0
    assert best["by_verdict"] <= best["pass_at_n"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text()) == metrics

    turns_metrics = refine_main([*args, "--output_dir", str(tmp_path / "refine"), "--rounds", "2"])
    from datasets import load_from_disk

    turns = load_from_disk(str(tmp_path / "refine" / "turns"))
    assert len(turns) == 36 * turns_metrics["refine"]["rounds_used"]  # nothing is ever accepted
    assert "discrimination" not in turns_metrics
