"""Step-critic training: data encoding and validation, the masked BCE loss, learning, saving, resuming.

The synthetic labelled data: each arithmetic problem's reference solution (every step labelled 1) and
a corrupted copy in which one operation's result is off by thousands and the later steps carry the
wrong value on (steps before it labelled 1, from it on 0).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from synthetic_labels import labelled_dataset
from transformers import AutoModelForTokenClassification, AutoTokenizer

from llmac.config import ModelConfig
from llmac.critic.data import IGNORE_INDEX, CriticCollator, encode_row, load_labelled_data
from llmac.critic.model import init_critic, load_critic_tokenizer
from llmac.critic.scoring import encode_example, score_steps
from llmac.critic.training import (
    CriticConfig,
    CriticDataConfig,
    build_trainer,
    masked_bce_loss,
    start_critic,
    train_critic,
)
from llmac.data import DataError


def training_args(output_dir: Path, **overrides) -> CriticConfig:
    settings = dict(
        output_dir=str(output_dir),
        max_steps=60,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=64,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        eval_fraction=0.25,
        eval_strategy="steps",
        eval_steps=60,
        eval_on_start=True,
        logging_steps=30,
        save_steps=30,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    return CriticConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def labelled(arithmetic_rows) -> Dataset:
    return labelled_dataset(arithmetic_rows.select(range(192)))


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory, labelled) -> Path:
    path = tmp_path_factory.mktemp("critic_labels") / "labels"
    labelled.save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_actor_dir):
    return load_critic_tokenizer(tiny_actor_dir)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_actor_dir, labelled_dir):
    """A critic trained 60 steps (checkpoints at 30 and 60), evaluated on 25% of the prompts."""
    out = tmp_path_factory.mktemp("critic_run") / "critic"
    data = CriticDataConfig(init_from=str(tiny_actor_dir), train_data=str(labelled_dir))
    trainer = train_critic(ModelConfig(), data, training_args(out))
    return trainer, out


# ---------------------------------------------------------------------------------------------- loss


def test_masked_bce_loss_matches_hand_computation():
    logits = torch.tensor([[0.3, 2.0, -5.0, -1.0], [1.5, 7.0, 0.0, 0.0]])
    labels = torch.tensor([[IGNORE_INDEX, 1.0, IGNORE_INDEX, 0.25], [0.0, IGNORE_INDEX, 0.6, IGNORE_INDEX]])

    def bce(z: float, m: float) -> float:  # -m log v - (1 - m) log(1 - v), v = sigmoid(z)
        v = 1 / (1 + math.exp(-z))
        return -m * math.log(v) - (1 - m) * math.log(1 - v)

    terms = [bce(2.0, 1.0), bce(-1.0, 0.25), bce(1.5, 0.0), bce(0.0, 0.6)]
    assert masked_bce_loss(logits, labels).item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    # The Trainer passes the step count of the whole accumulated batch: the sum is divided by it.
    assert masked_bce_loss(logits, labels, num_items=10).item() == pytest.approx(sum(terms) / 10, rel=1e-6)
    # Positions labelled -100 do not count, whatever their logits.
    assert masked_bce_loss(logits + (labels == IGNORE_INDEX) * 50.0, labels).item() == pytest.approx(
        sum(terms) / 4, rel=1e-6
    )


def test_trainer_loss_is_bce_of_the_value_logit_at_step_ends(tmp_path, tiny_actor_dir, tokenizer, labelled):
    model = init_critic(tiny_actor_dir)
    with torch.no_grad():  # a non-zero head, so the logits differ between positions
        model.score.weight.copy_(
            torch.randn(model.score.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    rows = [labelled[0], labelled[1]]  # a correct and a corrupted solution of one problem
    features = [encode_row(tokenizer, r["prompt"], r["completions"], r["labels"], "\n")[0] for r in rows]
    batch = CriticCollator(tokenizer.pad_token_id)(features)
    args = training_args(tmp_path, eval_strategy="no", eval_on_start=False)
    trainer = build_trainer(model, tokenizer, args, Dataset.from_list(features))

    loss = trainer.compute_loss(model, dict(batch)).item()

    model.eval()
    terms = []
    for r in rows:
        example = encode_example(tokenizer, r["prompt"], r["completions"], "\n")
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :, 0]
        for pos, m in zip(example.step_positions, r["labels"], strict=True):
            z = logits[pos].item()
            terms.append(math.log1p(math.exp(z)) - m * z)  # BCE with logits, by hand
    assert len(terms) == sum(len(r["labels"]) for r in rows)
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-5)


# ---------------------------------------------------------------------------------------------- data


def test_encoded_labels_sit_at_the_step_ends_scoring_reads(tokenizer, labelled):
    row = labelled[3]  # a corrupted solution: its labels are 1 then 0
    example = encode_example(tokenizer, row["prompt"], row["completions"], "\n")
    encoded, dropped = encode_row(tokenizer, row["prompt"], row["completions"], row["labels"], "\n")
    assert encoded["input_ids"] == example.input_ids and dropped == 0
    positions = [i for i, y in enumerate(encoded["labels"]) if y != IGNORE_INDEX]
    assert positions == example.step_positions
    assert [encoded["labels"][p] for p in positions] == row["labels"]
    assert all(tokenizer.decode([encoded["input_ids"][p]]) == "\n" for p in positions[:-1])

    # Truncation keeps the steps ending before max_length and counts the rest.
    cut = example.step_positions[1] + 1
    truncated, dropped = encode_row(tokenizer, row["prompt"], row["completions"], row["labels"], "\n", cut)
    assert truncated["input_ids"] == example.input_ids[:cut]
    assert [i for i, y in enumerate(truncated["labels"]) if y != IGNORE_INDEX] == example.step_positions[:2]
    assert dropped == len(row["labels"]) - 2

    last, _ = encode_row(
        tokenizer, row["prompt"], row["completions"], row["labels"], "\n", last_step_only=True
    )
    assert [i for i, y in enumerate(last["labels"]) if y != IGNORE_INDEX] == example.step_positions[-1:]


def test_every_file_layout_encodes_the_same(tmp_path, tokenizer, labelled):
    rows = labelled.select(range(6))
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    with (tmp_path / "rows.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n\n")  # blank lines are skipped
    rows.save_to_disk(str(tmp_path / "rows"))
    encoded = [
        load_labelled_data(tmp_path / name, tokenizer, "\n", max_length=40).dataset.to_dict()
        for name in ("rows", "rows.jsonl", "rows.parquet")
    ]
    assert encoded[0] == encoded[1] == encoded[2]
    data = load_labelled_data(tmp_path / "rows", tokenizer, "\n", max_length=40)
    assert data.num_steps + data.dropped_steps == sum(map(len, rows["labels"]))
    assert data.dropped_steps > 0  # 40 tokens cut some solutions

    hard = load_labelled_data(tmp_path / "rows.jsonl", tokenizer, "\n", label_type="hard").dataset
    assert [[y for y in labels if y != IGNORE_INDEX] for labels in hard["labels"]] == [
        [float(v) for v in row] for row in rows["hard_labels"]
    ]


def _bad(row: dict, **changes) -> dict:
    return {**row, **changes}


BAD_ROWS = {
    "zero steps": (lambda r: _bad(r, completions=[], labels=[], hard_labels=[]), "completions", "zero steps"),
    "blank step": (
        lambda r: _bad(r, completions=[r["completions"][0], "  "] + r["completions"][2:]),
        "completions",
        "no visible text",
    ),
    "delimiter inside a step": (
        lambda r: _bad(r, completions=["\n".join(r["completions"])], labels=[1.0], hard_labels=[1]),
        "completions",
        "containing the delimiter",
    ),
    "label above 1": (lambda r: _bad(r, labels=[1.5] + r["labels"][1:]), "labels", "outside [0, 1]"),
    "NaN label": (lambda r: _bad(r, labels=[float("nan")] + r["labels"][1:]), "labels", "outside [0, 1]"),
    "label count": (lambda r: _bad(r, labels=r["labels"][:-1]), "labels", "differs from the step count"),
    "missing labels": (lambda r: {k: v for k, v in r.items() if k != "labels"}, "labels", "is missing"),
    "hard label not 0/1": (
        lambda r: _bad(r, hard_labels=[2] + r["hard_labels"][1:]),
        "hard_labels",
        "not 0 or 1",
    ),
    "tokenizer mismatch": (
        lambda r: _bad(r, prompt=r["prompt"] + " €"),
        "prompt",
        "the critic's tokenizer does not match the data",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_rows_are_reported_with_file_row_and_field(tmp_path, tokenizer, labelled, case):
    make_bad, field_name, phrase = BAD_ROWS[case]
    good = labelled[1]
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(make_bad(dict(good))) + "\n")
    with pytest.raises(DataError) as info:
        load_labelled_data(path, tokenizer, "\n")
    message = str(info.value)
    assert str(path) in message
    assert f"line 2: field '{field_name}'" in message
    assert phrase in message
    assert "line 1" not in message


# ---------------------------------------------------------------------------------------------- training


def test_training_improves_held_out_step_auc(trained):
    trainer, out = trained
    evals = [h for h in trainer.state.log_history if "eval_step_auc" in h]
    before, after = evals[0], evals[-1]
    assert before["step"] == 0 and after["step"] == 60
    assert before["eval_step_auc"] == 0.5  # a zero head values every step 0.5
    assert before["eval_bce"] == pytest.approx(math.log(2), abs=1e-6)
    assert after["eval_step_auc"] > 0.9, evals
    assert after["eval_bce"] < 0.4 and after["eval_mae"] < 0.25, evals
    # the held-out prompts: 25% of 192, both solutions of each
    assert before["eval_num_steps"] == after["eval_num_steps"] > 0
    assert json.loads((out / "eval_results.json").read_text())["eval_step_auc"] == after["eval_step_auc"]


def test_saved_critic_reloads_with_plain_transformers(trained, labelled):
    trainer, out = trained
    reloaded = AutoModelForTokenClassification.from_pretrained(out)
    plain_tokenizer = AutoTokenizer.from_pretrained(out)
    assert plain_tokenizer.padding_side == "right"
    assert reloaded.config.num_labels == 1 and reloaded.config.step_delimiter == "\n"
    in_memory = trainer.model.state_dict()
    assert reloaded.state_dict().keys() == in_memory.keys()
    assert all(torch.equal(reloaded.state_dict()[k], in_memory[k]) for k in in_memory)

    rows = labelled.select(range(12))
    args = (list(rows["prompt"]), list(rows["completions"]), "\n")
    saved_values = score_steps(reloaded, plain_tokenizer, *args, batch_size=12)
    memory_values = score_steps(trainer.model, trainer.processing_class, *args, batch_size=12)
    assert saved_values == memory_values
    assert len({round(v, 3) for values in saved_values for v in values}) > 2  # a trained, non-constant head


def test_resume_continues_from_the_newest_checkpoint(trained, tmp_path, tiny_actor_dir, labelled_dir):
    _, out = trained
    resumed_dir = tmp_path / "critic"
    shutil.copytree(out, resumed_dir)  # keeps modification times
    newest = resumed_dir / "checkpoint-60" / "model.safetensors"
    written = newest.stat().st_mtime_ns
    data = CriticDataConfig(init_from=str(tiny_actor_dir), train_data=str(labelled_dir))
    args = training_args(resumed_dir, max_steps=64, eval_strategy="no", eval_on_start=False)
    trainer = train_critic(ModelConfig(), data, args)
    assert trainer.state.global_step == 64
    assert (resumed_dir / "checkpoint-64").is_dir()
    # The state came from the checkpoint: its history starts with the first run's step-0 evaluation
    # (this run does not evaluate on start), and steps 1-60 were not trained (or saved) again.
    assert trainer.state.log_history[0]["step"] == 0 and "eval_step_auc" in trainer.state.log_history[0]
    assert newest.stat().st_mtime_ns == written


def test_a_run_killed_after_its_first_checkpoint_resumes_to_the_uninterrupted_weights(
    trained, tmp_path, tiny_actor_dir, labelled_dir
):
    trainer, out = trained
    killed = tmp_path / "critic"
    # What a run killed between its checkpoints at steps 30 and 60 leaves behind (and no final weights).
    shutil.copytree(
        out, killed, ignore=lambda folder, names: ["checkpoint-60"] if Path(folder) == out else []
    )
    (killed / "model.safetensors").unlink()
    data = CriticDataConfig(init_from=str(tiny_actor_dir), train_data=str(labelled_dir))
    resumed = train_critic(
        ModelConfig(), data, training_args(killed, eval_strategy="no", eval_on_start=False)
    )
    assert resumed.state.global_step == 60

    uninterrupted = load_file(out / "model.safetensors")
    at_30 = load_file(out / "checkpoint-30" / "model.safetensors")
    weights = load_file(killed / "model.safetensors")
    assert weights.keys() == uninterrupted.keys()
    gap = max((weights[k] - uninterrupted[k]).abs().max().item() for k in weights)
    moved = max((uninterrupted[k] - at_30[k]).abs().max().item() for k in weights)
    # Steps 31-60 saw the batches the uninterrupted run saw, in its order (the sampler state, data
    # position and RNG came back): the same weights, where training on anything else moves them by ~moved.
    assert moved > 1e-2 and gap < 1e-5, (gap, moved)


def test_continuing_a_critic_keeps_its_weights_and_delimiter(trained, tiny_actor_dir):
    trainer, out = trained
    model, delimiter = start_critic(out, None)
    assert delimiter == "\n"
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="trained with step delimiter"):
        start_critic(out, "\n\n")
    actor_start, _ = start_critic(tiny_actor_dir, None)
    assert torch.count_nonzero(actor_start.score.weight) == 0  # a new head on the actor's backbone


def test_lora_critic_is_saved_merged(tmp_path, tiny_actor_dir, labelled_dir):
    data = CriticDataConfig(init_from=str(tiny_actor_dir), train_data=str(labelled_dir))
    model_config = replace(ModelConfig(), use_lora=True, lora_r=4, lora_alpha=8)
    args = training_args(
        tmp_path / "lora", max_steps=6, eval_strategy="no", eval_on_start=False, eval_fraction=0.0
    )
    trainer = train_critic(model_config, data, args)
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path / "lora")
    initial = init_critic(tiny_actor_dir).state_dict()
    saved = reloaded.state_dict()
    assert saved.keys() == initial.keys()  # merged: no adapter weights
    assert not torch.equal(
        saved["model.layers.0.self_attn.q_proj.weight"], initial["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.count_nonzero(saved["score.weight"]) > 0  # the head is trained in full
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


def test_lora_under_zero3_is_refused_before_any_work(tmp_path, tiny_actor_dir, labelled_dir):
    from transformers.integrations import HfDeepSpeedConfig

    from llmac.distributed import reset_hf_deepspeed_config

    data = CriticDataConfig(init_from=str(tiny_actor_dir), train_data=str(labelled_dir))
    model_config = replace(ModelConfig(), use_lora=True)
    args = training_args(tmp_path / "lora", eval_strategy="no", eval_on_start=False)
    zero3 = HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})  # noqa: F841
    try:
        with pytest.raises(ValueError, match="LoRA under DeepSpeed ZeRO-3 is not supported yet"):
            train_critic(model_config, data, args)
    finally:
        reset_hf_deepspeed_config()
    assert not (tmp_path / "lora").exists()
