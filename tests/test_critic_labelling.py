"""Monte-Carlo step labels: the label arithmetic, the prefixes asked for, seeds, resume, real engines.

A scripted engine (continuations whose correctness is fixed per prefix) checks what is asked of an
engine and what labels come out by hand; the HF engine checks a real job and its resume after a
kill; one vLLM test checks labels from the engine that labelling is meant to run on.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk
from model_copies import nudged_copy

from llmac.critic.labelling import MCLabelConfig, label_steps, mc_step_labels, prefix_seed_offsets
from llmac.data import arithmetic_dataset
from llmac.engines import Completion, SamplingConfig
from llmac.engines.hf import HFEngine
from llmac.errors import OutputError
from llmac.rewards import math_rewards
from llmac.rollouts import sample_rollouts

GOLD = "7"


class CharTokenizer:
    """Token id = character code, plus id 1000 for the two characters "ab" and id 0 for EOS."""

    chat_template = None  # format_prompt gives the plain question

    def decode(self, ids, skip_special_tokens=True):
        return "".join("ab" if i == 1000 else "" if i == 0 else chr(i) for i in ids)


class ScriptedEngine:
    """``continue_from`` returns ``correct[prefix]`` right continuations out of n; records every call."""

    delimiter = "\n"

    def __init__(self, correct: dict[str, int]) -> None:
        self.correct, self.calls, self.tokenizer = correct, [], CharTokenizer()

    def continue_from(self, prompts, prefixes, sampling: SamplingConfig):
        prefixes = [p if isinstance(p, str) else list(p) for p in prefixes]
        self.calls.append((list(prompts), prefixes, sampling))
        groups = []
        for prefix in prefixes:
            right = self.correct[prefix if isinstance(prefix, str) else self.tokenizer.decode(prefix)]
            texts = [f"more\nAnswer: {GOLD if k < right else 0}" for k in range(sampling.n)]
            groups.append([Completion([1], [0.0], "stop", text=t) for t in texts])
        return groups


class RecordingReward:
    """1.0 when the text's last line is ``Answer: <gold>``; keeps every text it was asked about."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, texts, golds):
        self.texts += texts
        return [float(t.rstrip().endswith(f"Answer: {g}")) for t, g in zip(texts, golds, strict=True)]


# -- label arithmetic ------------------------------------------------------------------------------
def test_soft_and_hard_labels_by_hand():
    assert mc_step_labels([8, 3, 0], 8, solution_correct=False) == ([1.0, 0.375, 0.0, 0.0], [1, 1, 0, 0])
    assert mc_step_labels([0, 1], 4, solution_correct=True) == ([0.0, 0.25, 1.0], [0, 1, 1])
    assert mc_step_labels([], 8, solution_correct=True) == ([1.0], [1])  # one step: the outcome only
    with pytest.raises(ValueError, match="9 correct continuations out of 8"):
        mc_step_labels([9], 8, solution_correct=True)


def test_prefix_seed_offsets_are_running_sums():
    assert prefix_seed_offsets([2, 0, 3, 1]) == [0, 2, 2, 5]


# -- what is asked of the engine, what comes out ---------------------------------------------------
def test_step_lists_are_labelled_from_prefixes_ending_with_the_delimiter(caplog):
    rows = Dataset.from_dict(
        {
            "question": ["q0", "q1", "q2", "q3", "q4"],
            "answer": [GOLD] * 5,
            "completions": [["a", "b", "c"], [], ["x", f"Answer: {GOLD}"], ["Answer: 3"], [" ", ""]],
        }
    )
    engine = ScriptedEngine({"a\n": 3, "a\nb\n": 0, "x\n": 4})
    reward = RecordingReward()
    config = MCLabelConfig(num_rollouts=4, seed=11, max_new_tokens=9)
    with caplog.at_level(logging.WARNING, logger="llmac.critic.labelling"):
        out = label_steps(engine, rows, config, reward, progress=False)

    assert "skipped 2 of 5 solutions" in caplog.text  # rows 1 and 4 have no visible step
    [(prompts, prefixes, sampling)] = engine.calls  # one call for the whole batch
    assert prompts == ["q0", "q0", "q2"] and prefixes == ["a\n", "a\nb\n", "x\n"]
    assert (sampling.n, sampling.seed, sampling.max_new_tokens, sampling.temperature) == (4, 11, 9, 1.0)
    # Verified texts: prefix + continuation, then the three whole solutions.
    assert reward.texts[0] == f"a\nmore\nAnswer: {GOLD}" and reward.texts[7] == "a\nb\nmore\nAnswer: 0"
    assert reward.texts[12:] == ["a\nb\nc", f"x\nAnswer: {GOLD}", "Answer: 3"]
    assert out.to_dict() == {
        "prompt": ["q0", "q2", "q3"],
        "completions": [["a", "b", "c"], ["x", f"Answer: {GOLD}"], ["Answer: 3"]],
        "labels": [[0.75, 0.0, 0.0], [1.0, 1.0], [0.0]],
        "hard_labels": [[1, 0, 0], [1, 1], [0]],
        "answer": [GOLD] * 3,
        "solution_reward": [0.0, 1.0, 0.0],
        "source_index": [0, 2, 3],
    }


def test_completion_text_is_cut_with_split_steps():
    rows = Dataset.from_dict(
        {"question": ["q"], "answer": [GOLD], "completion": [f"a\n\n  b\nAnswer: {GOLD}\n"]}
    )
    engine = ScriptedEngine({"a\n\n": 2, "a\n\n  b\n": 1})
    out = label_steps(engine, rows, MCLabelConfig(num_rollouts=2), RecordingReward(), progress=False)
    assert engine.calls[0][1] == ["a\n\n", "a\n\n  b\n"]  # blank lines stay with the step before
    assert out["completions"] == [["a", "b", f"Answer: {GOLD}"]]
    assert out["labels"] == [[1.0, 0.5, 1.0]] and out["hard_labels"] == [[1, 1, 1]]


def test_rollouts_continue_from_the_generated_token_ids():
    # Id 1000 is "ab": re-tokenizing the text could not give these ids back.
    text = f"ab\ncd\nAnswer: {GOLD}"
    ids = [1000, 10, 99, 100, 10, *map(ord, f"Answer: {GOLD}"), 0]
    rollout = {"question": ["q"], "answer": [GOLD], "prompt": ["q"], "completion": [text],
               "token_ids": [ids], "step_ends": [[1, 4, 13]]}  # fmt: skip
    engine = ScriptedEngine({"ab\n": 1, "ab\ncd\n": 0})
    reward = RecordingReward()
    out = label_steps(
        engine, Dataset.from_dict(rollout), MCLabelConfig(num_rollouts=3), reward, progress=False
    )
    assert engine.calls[0][1] == [[1000, 10], [1000, 10, 99, 100, 10]]
    assert reward.texts[0] == f"ab\nmore\nAnswer: {GOLD}" and reward.texts[-1] == text
    assert out["labels"] == [[1 / 3, 0.0, 1.0]] and out["completions"] == [["ab", "cd", f"Answer: {GOLD}"]]

    with pytest.raises(ValueError, match="row 0: its 'prompt' is not format_prompt"):
        label_steps(engine, Dataset.from_dict({**rollout, "prompt": ["other"]}), MCLabelConfig(), reward)
    with pytest.raises(ValueError, match=r"row 0: 'step_ends' \[1, 4\] do not fit its 3 steps"):
        label_steps(engine, Dataset.from_dict({**rollout, "step_ends": [[1, 4]]}), MCLabelConfig(), reward)


def test_seeds_follow_the_prefix_not_the_batch():
    steps = [[f"s{i}{t}" for t in range(1 + i % 3)] for i in range(7)]
    rows = Dataset.from_dict({"question": ["q"] * 7, "answer": [GOLD] * 7, "completions": steps})
    seen = {}
    for batch_size in (1, 3, 7):
        engine = ScriptedEngine({"\n".join(s[: t + 1]) + "\n": 1 for s in steps for t in range(len(s) - 1)})
        config = MCLabelConfig(num_rollouts=4, seed=100, batch_size=batch_size)
        label_steps(engine, rows, config, RecordingReward(), progress=False)
        # VLLMEngine gives sample k of the call's j-th prefix the seed call_seed + j * n + k.
        seen[batch_size] = {
            prefix: sampling.seed + j * sampling.n
            for _, prefixes, sampling in engine.calls
            for j, prefix in enumerate(prefixes)
        }
        # Solutions have 1, 2, 3, 1, 2, 3, 1 steps; a batch of one-step solutions needs no call.
        assert len(engine.calls) == {1: 4, 3: 2, 7: 1}[batch_size]
    assert seen[1] == seen[3] == seen[7]
    assert sorted(seen[1].values()) == [100 + 4 * j for j in range(6)]  # 6 prefixes, 4 seeds apart


def test_bad_input_is_refused_with_the_column_named():
    engine, reward = ScriptedEngine({}), RecordingReward()
    with pytest.raises(ValueError, match="need a 'answer' column"):
        label_steps(
            engine, Dataset.from_dict({"question": ["q"], "completion": ["a"]}), MCLabelConfig(), reward
        )
    with pytest.raises(ValueError, match="need a 'completion' column"):
        label_steps(engine, Dataset.from_dict({"question": ["q"], "answer": ["1"]}), MCLabelConfig(), reward)
    with pytest.raises(ValueError, match="none of the 1 solutions has a step"):
        rows = Dataset.from_dict({"question": ["q"], "answer": ["1"], "completion": ["  \n"]})
        label_steps(engine, rows, MCLabelConfig(), reward)
    with pytest.raises(ValueError, match="MCLabelConfig.num_rollouts = 0: must be >= 1"):
        MCLabelConfig(num_rollouts=0)


# -- real engines ----------------------------------------------------------------------------------
CONFIG = MCLabelConfig(num_rollouts=4, max_new_tokens=24, seed=7, batch_size=2)


def parity_reward(texts, golds):
    """Depends on every character of the text, so any change in a sampled continuation shows in the labels.

    (The tiny actor rarely gets a sum right: math rewards would give all-zero labels, which two
    different sets of continuations could share.)
    """
    return [float(len(t) % 2 == 0) for t in texts]


@pytest.fixture(scope="module")
def hf_engine(tiny_actor_dir):
    return HFEngine(tiny_actor_dir, dtype="float32")


@pytest.fixture(scope="module")
def rollouts(hf_engine):
    """6 rollouts of 3 questions (math rewards), sampled by the tiny actor."""
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=64, seed=1)
    return sample_rollouts(hf_engine, arithmetic_dataset(3, seed=21), sampling, math_rewards, progress=False)


@pytest.fixture(scope="module")
def hf_labels(hf_engine, rollouts, tmp_path_factory):
    """Labels of the rollouts by an uninterrupted HF job."""
    return label_steps(hf_engine, rollouts, CONFIG, parity_reward, shard_dir=tmp_path_factory.mktemp("full"))


def assert_valid_labels(out, rollouts, solution_rewards, n: int) -> None:
    assert out["source_index"] == list(range(len(rollouts)))
    assert out["prompt"] == rollouts["question"] and out["answer"] == rollouts["answer"]
    assert out["solution_reward"] == solution_rewards
    for row, source in zip(out, rollouts, strict=True):
        assert len(row["labels"]) == len(row["hard_labels"]) == len(source["steps"]) >= 2
        assert row["completions"] == [step.strip() for step in source["steps"]]
        assert all(0 <= m <= 1 and (m * n).is_integer() for m in row["labels"])
        assert row["hard_labels"] == [int(m > 0) for m in row["labels"]]
        assert row["labels"][-1] == row["solution_reward"]  # the last-step rule


def test_hf_labels_of_rollouts(hf_labels, rollouts):
    assert_valid_labels(hf_labels, rollouts, parity_reward(rollouts["completion"], []), CONFIG.num_rollouts)
    soft = [m for labels in hf_labels["labels"] for m in labels[:-1]]
    assert len(set(soft)) > 2  # sampled continuations, not one fixed text


class CrashingEngine:
    """The HF engine, dying (like a killed job) on call number ``crash_on``; counts its calls."""

    def __init__(self, engine, crash_on: int | None = None) -> None:
        self.engine, self.crash_on, self.calls = engine, crash_on, 0
        self.tokenizer, self.delimiter = engine.tokenizer, engine.delimiter
        self.model_path = engine.model_path  # what the shard store fingerprints

    def continue_from(self, prompts, prefixes, sampling):
        self.calls += 1
        if self.calls == self.crash_on:
            raise KeyboardInterrupt
        return self.engine.continue_from(prompts, prefixes, sampling)


def test_killed_labelling_job_resumes_to_the_same_dataset(hf_engine, rollouts, hf_labels, tmp_path):
    shards = tmp_path / "shards"
    with pytest.raises(KeyboardInterrupt):
        label_steps(CrashingEngine(hf_engine, crash_on=2), rollouts, CONFIG, parity_reward, shard_dir=shards)
    assert sorted(p.name for p in shards.glob("shard-*")) == ["shard-00000"]
    engine = CrashingEngine(hf_engine)
    resumed = label_steps(engine, rollouts, CONFIG, parity_reward, shard_dir=shards, progress=False)
    assert engine.calls == 2  # 6 solutions in batches of 2: the first batch was loaded
    assert resumed.to_dict() == hf_labels.to_dict()

    with pytest.raises(OutputError, match=r"holds MC step-label shards of another job \(changed: config\)"):
        other = MCLabelConfig(num_rollouts=4, max_new_tokens=24, seed=8, batch_size=2)
        label_steps(hf_engine, rollouts, other, parity_reward, shard_dir=shards, progress=False)


def odd_length_reward(texts, golds):
    return [float(len(t) % 2 == 1) for t in texts]


def test_a_labelling_rerun_with_another_model_or_reward_is_refused(
    tiny_actor_dir, hf_engine, rollouts, hf_labels, tmp_path
):
    """The `critic label` case: labels of one actor or reward are never mixed with another's."""
    shards = tmp_path / "labels"
    with pytest.raises(KeyboardInterrupt):
        label_steps(CrashingEngine(hf_engine, crash_on=2), rollouts, CONFIG, parity_reward, shard_dir=shards)
    written = {p: p.stat().st_mtime_ns for p in shards.rglob("*")}

    other_actor = HFEngine(nudged_copy(tiny_actor_dir, tmp_path / "other_actor"), dtype="float32")
    with pytest.raises(
        OutputError, match=r"labels holds MC step-label shards of another job \(changed: model\)"
    ):
        label_steps(other_actor, rollouts, CONFIG, parity_reward, shard_dir=shards, progress=False)
    with pytest.raises(OutputError, match=r"\(changed: reward\)"):
        label_steps(hf_engine, rollouts, CONFIG, odd_length_reward, shard_dir=shards, progress=False)
    assert {p: p.stat().st_mtime_ns for p in shards.rglob("*")} == written  # refused before any write

    engine = CrashingEngine(hf_engine)
    resumed = label_steps(engine, rollouts, CONFIG, parity_reward, shard_dir=shards, progress=False)
    assert engine.calls == 2  # the first of three batches came from its shard
    assert resumed.to_dict() == hf_labels.to_dict()


REWARD_MODULE = """
import os

def parity_reward(texts, golds):
    with open(os.environ["REWARD_CALLS"], "a") as log:  # one line per call: how many texts it scored
        log.write(f"{len(texts)}\\n")
    return [float(len(t) % 2 == 0) for t in texts]
"""


def test_sigkilled_llmac_critic_label_resumes_to_the_same_dataset(tiny_actor_dir, rollouts, tmp_path):
    """`llmac critic label` killed mid-run, then rerun, writes what an uninterrupted run writes."""
    rollouts.select(range(4)).save_to_disk(str(tmp_path / "rollouts"))
    (tmp_path / "job_reward.py").write_text(REWARD_MODULE)

    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "llmac", "critic", "label", "--model_name_or_path", str(tiny_actor_dir),
            "--engine", "hf", "--solutions", str(tmp_path / "rollouts"), "--reward", "job_reward:parity_reward",
            "--num_rollouts", "4", "--max_new_tokens", "24", "--seed", "7", "--batch_size", "2",
            "--output_dir", str(out),
        ]  # fmt: skip

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(tmp_path)}
    calls = lambda run: (tmp_path / f"{run}.calls").read_text().split()  # noqa: E731
    subprocess.run(command(tmp_path / "uninterrupted"), env={**env, "REWARD_CALLS": str(tmp_path / "whole.calls")},
                   check=True, capture_output=True)  # fmt: skip
    assert len(calls("whole")) == 2  # one verification call per batch of 2 solutions

    out = tmp_path / "labels"
    shards = tmp_path / "labels.partial" / "labels"
    job = subprocess.Popen(command(out), env={**env, "REWARD_CALLS": str(tmp_path / "killed.calls")},
                           stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not (shards / "shard-00000").is_dir() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.poll() is None, job.stderr.read().decode()[-2000:]  # killed while on batch 2 of 2
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert not (shards / "shard-00001").exists() and not out.exists()

    subprocess.run(command(out), env={**env, "REWARD_CALLS": str(tmp_path / "resumed.calls")}, check=True,
                   capture_output=True)  # fmt: skip
    assert load_from_disk(str(out)).to_dict() == load_from_disk(str(tmp_path / "uninterrupted")).to_dict()
    # Seeds follow the prefix, so a rerun that ignored the saved shard would write the same labels: the
    # rerun must have verified only the second batch (the first came from its shard).
    assert calls("resumed") == calls("whole")[1:]
    assert not shards.exists()  # the finished job cleans up its shards


@pytest.mark.vllm
def test_vllm_labels_are_valid_and_reproducible(vllm_engine, rollouts):
    first = label_steps(vllm_engine, rollouts, CONFIG, parity_reward, progress=False)
    assert_valid_labels(first, rollouts, parity_reward(rollouts["completion"], []), CONFIG.num_rollouts)
    again = label_steps(vllm_engine, rollouts, CONFIG, parity_reward, progress=False)
    assert again.to_dict() == first.to_dict()
    other_batches = MCLabelConfig(num_rollouts=4, max_new_tokens=24, seed=7, batch_size=5)
    assert (
        label_steps(vllm_engine, rollouts, other_batches, parity_reward, progress=False)["labels"]
        == first["labels"]
    )
    other_seed = MCLabelConfig(num_rollouts=4, max_new_tokens=24, seed=8, batch_size=2)
    assert (
        label_steps(vllm_engine, rollouts, other_seed, parity_reward, progress=False)["labels"]
        != first["labels"]
    )
    verified = label_steps(vllm_engine, rollouts, CONFIG, math_rewards, progress=False)
    assert_valid_labels(verified, rollouts, rollouts["reward"], CONFIG.num_rollouts)
