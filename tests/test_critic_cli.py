"""`llmac critic label | train | score | eval | inspect` end to end on the tiny actor (HF engine)."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from llmac.cli import main as llmac
from llmac.critic.model import load_critic, load_critic_tokenizer
from llmac.critic.scoring import score_steps
from llmac.rollouts import save_dataset_atomically


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("critic_cli")


@pytest.fixture(scope="module")
def labels_dir(workdir, tiny_actor_dir):
    out = workdir / "labels"
    llmac([
        "critic", "label", "--model_name_or_path", str(tiny_actor_dir), "--engine", "hf",
        "--task", "arithmetic", "--num_train", "6", "--num_solutions", "2", "--solution_max_new_tokens", "48",
        "--num_rollouts", "3", "--max_new_tokens", "48", "--output_dir", str(out),
    ])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def critic_dir(workdir, tiny_actor_dir, labels_dir):
    out = workdir / "critic"
    llmac([
        "critic", "train", "--init_from", str(tiny_actor_dir), "--train_data", str(labels_dir),
        "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--eval_fraction", "0", "--report_to", "none", "--disable_tqdm", "true",
    ])  # fmt: skip
    return out


def test_label_writes_the_prm_layout_and_cleans_up(labels_dir):
    labelled = load_from_disk(str(labels_dir))
    assert {"prompt", "completions", "labels", "hard_labels"} <= set(labelled.column_names)
    assert 0 < len(labelled) <= 12  # 6 questions x 2 solutions, minus any without a step
    for steps, soft, hard in zip(
        labelled["completions"], labelled["labels"], labelled["hard_labels"], strict=True
    ):
        assert len(steps) == len(soft) == len(hard) > 0
        assert all(0 <= v <= 1 for v in soft)
        assert all(h == (v > 0) for v, h in zip(soft, hard, strict=True))
        assert all(round(v * 3) == v * 3 for v in soft[:-1])  # k of N=3 continuations
    assert not labels_dir.with_name("labels.partial").exists()


def test_score_adds_values_equal_to_the_library(critic_dir, labels_dir, workdir):
    out = workdir / "scored"
    llmac(["critic", "score", "--critic", str(critic_dir), "--data", str(labels_dir), "--output", str(out)])
    scored = load_from_disk(str(out))
    critic, tokenizer = load_critic(critic_dir), load_critic_tokenizer(critic_dir)
    expected = score_steps(critic, tokenizer, scored["prompt"], scored["completions"], "\n")
    for got, want in zip(scored["step_values"], expected, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_eval_and_inspect_on_rollouts(critic_dir, labels_dir, workdir, tiny_actor_dir):
    rollouts = workdir / "rollouts"
    llmac([
        "generate", "--model_name_or_path", str(tiny_actor_dir), "--engine", "hf", "--task", "arithmetic",
        "--split", "eval", "--num_eval", "5", "--num_samples", "3", "--max_new_tokens", "48",
        "--output_dir", str(rollouts),
    ])  # fmt: skip
    # Make the best-of-n figures checkable: exactly one correct sample per question.
    data = load_from_disk(str(rollouts))
    data = data.map(lambda row: {"reward": float(row["sample_index"] == 0)})

    # ... and the sampler most sure of that sample, except on question 0 where it is least sure.
    def logprobs(row: dict) -> dict:
        worst = (
            -9.0
            if row["prompt_index"] == 0 and row["sample_index"] == 0
            else -0.5 * (row["sample_index"] + 1)
        )
        return {"logprobs": [-0.1, worst]}

    data = data.map(logprobs)
    save_dataset_atomically(data, workdir / "rollouts_fixed")

    llmac([
        "critic", "eval", "--critic", str(critic_dir), "--rollouts", str(workdir / "rollouts_fixed"),
        "--output_dir", str(workdir / "eval"),
    ])  # fmt: skip
    metrics = json.loads((workdir / "eval" / "metrics.json").read_text())["best_of_n"]
    assert metrics["n"] == 3 and metrics["num_questions"] == 5
    assert metrics["random"] == pytest.approx(1 / 3)
    assert metrics["pass_at_n"] == 1.0
    assert 0 <= metrics["critic_min"] <= 1
    assert metrics["sampler_confidence"] == pytest.approx(4 / 5)

    page = workdir / "critic.html"
    llmac(["critic", "inspect", "--critic", str(critic_dir), "--data", str(rollouts), "--output", str(page)])
    html = page.read_text()
    assert html.count('class="solution') == len(data) and "data-value" in html


def test_unknown_subcommand_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        llmac(["critic", "lable"])
    assert "unknown command 'lable'" in capsys.readouterr().err
    llmac(["critic", "--help"])
    assert "label" in capsys.readouterr().out
