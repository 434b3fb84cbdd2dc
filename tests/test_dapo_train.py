"""``llmac dapo train`` (Direct Advantage Policy Optimization) end to end on the tiny actor: a build, then a
few offline steps that move the log-ratio of positive-advantage candidates up and negative ones down."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import load_from_disk

from llmac.config import ModelConfig
from llmac.critic.labelling import MCLabelConfig
from llmac.dapo.build import save_states, states_of, value_questions
from llmac.dapo.config import DAPOBuildConfig, DAPOTrainConfig
from llmac.dapo.trainer import TRAIN_DATA, DAPOTrainer, candidate_batch, summed_logprobs
from llmac.data import arithmetic_dataset
from llmac.engines.hf import HFEngine
from llmac.models import load_actor, load_tokenizer
from llmac.outputs import read_marker


def parity_reward(texts, golds):
    return [float(len(t) % 2 == 0) for t in texts]


@pytest.fixture(scope="module")
def built(tiny_actor_dir, tmp_path_factory):
    engine = HFEngine(tiny_actor_dir, dtype="float32")
    rows = arithmetic_dataset(4, seed=41).select_columns(["question", "answer"])
    build = DAPOBuildConfig(
        num_solutions=4, keep_solutions=4, solution_max_new_tokens=32, questions_per_shard=4
    )
    valued = value_questions(engine, rows, build, MCLabelConfig(num_rollouts=2, max_new_tokens=16, seed=5),
                             parity_reward, progress=False)  # fmt: skip
    states, stats = states_of(valued)
    return save_states(states, stats, tmp_path_factory.mktemp("dapo") / "data"), stats


def test_training_moves_log_ratios_with_the_advantages(tiny_actor_dir, built, tmp_path):
    data_dir, stats = built
    out = tmp_path / "run"
    config = DAPOTrainConfig(output_dir=str(out), beta=0.5, advantage_threshold=0.1, learning_rate=1e-4,
                             num_epochs=3, states_per_batch=4, checkpoint_every=2, progress=False)  # fmt: skip
    DAPOTrainer(ModelConfig(model_name_or_path=str(tiny_actor_dir)), config, str(data_dir), "\n").train()
    data = load_from_disk(str(out / TRAIN_DATA))
    counts = json.loads((out / "train_data_counts.json").read_text())
    assert counts["states_in"] == stats["states"] and counts["states_kept"] == len(data) > 0
    assert counts["states_in"] == len(data) + counts["states_all_equal"] + counts["states_below_threshold"]
    for row in data:  # the cached values, advantages and reference log-probs
        assert row["advantages"] == pytest.approx(
            [q - sum(row["values"]) / len(row["values"]) for q in row["values"]]
        )
        assert max(row["values"]) - min(row["values"]) >= 0.1
    rows = data.to_list()
    tokenizer = load_tokenizer(tiny_actor_dir)
    batch = candidate_batch(rows, tokenizer, "\n")
    ref = torch.tensor([x for r in rows for x in r["ref_logprobs"]])
    # the cache holds the starting actor's log-probs
    start = summed_logprobs(load_actor(tiny_actor_dir), batch, 64)
    assert torch.allclose(start, ref, atol=1e-4)
    advantages = torch.tensor([a for r in rows for a in r["advantages"]])
    log_ratio = summed_logprobs(load_actor(out / "actor"), batch, 64) - ref
    assert log_ratio[advantages > 0].mean() > 0.05
    assert log_ratio[advantages < 0].mean() < -0.05
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, len(metrics) + 1))
    assert all(m["completions"] == stats["completions"] for m in metrics)
    assert read_marker(out / "actor")["complete"]


def _metrics_without_times(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")} for row in rows]


def test_an_interrupted_run_resumes_to_the_same_actor_and_metrics(
    tiny_actor_dir, built, tmp_path, monkeypatch
):
    data_dir, _ = built
    model = ModelConfig(model_name_or_path=str(tiny_actor_dir))

    def config(out):
        return DAPOTrainConfig(output_dir=str(out), beta=0.5, advantage_threshold=0.1, learning_rate=1e-4,
                               num_epochs=2, states_per_batch=1, checkpoint_every=2, progress=False)  # fmt: skip

    whole = tmp_path / "whole"
    DAPOTrainer(model, config(whole), str(data_dir), "\n").train()

    resumed = tmp_path / "resumed"
    real_update, calls = DAPOTrainer.update, []

    def killed_at_the_fourth_step(self, states):
        calls.append(states)
        if len(calls) == 4:  # after the checkpoint of step 2 and one more step that is lost
            raise KeyboardInterrupt
        return real_update(self, states)

    monkeypatch.setattr(DAPOTrainer, "update", killed_at_the_fourth_step)
    with pytest.raises(KeyboardInterrupt):
        DAPOTrainer(model, config(resumed), str(data_dir), "\n").train()
    monkeypatch.setattr(DAPOTrainer, "update", real_update)
    trainer = DAPOTrainer(model, config(resumed), str(data_dir), "\n")
    assert trainer.start == 2 and trainer.total_steps > 4
    trainer.train()

    assert _metrics_without_times(resumed) == _metrics_without_times(whole)  # exact: same floats
    a, b = load_actor(whole / "actor").state_dict(), load_actor(resumed / "actor").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], v) for k, v in load_actor(tiny_actor_dir).state_dict().items())
