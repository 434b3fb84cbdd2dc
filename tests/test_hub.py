"""Hub export: models load with plain transformers, adapters are merged, datasets read back, pushes go
where they are told. No Hub here: pushing is checked against a recording stand-in for ``HfApi``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from huggingface_hub import DatasetCard, ModelCard
from recording_hub import RecordingHfApi
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmac import hub
from llmac.data.loading import DataError
from llmac.models import TinyModelConfig, save_tiny_actor

TEXTS = ["12 + 7 = 19\n19 - 4 = 15\nAnswer: 15", "What is 3 + 4?"]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A PPO-like run folder: the actor, training leftovers, and metrics with two evaluations."""
    run = tmp_path / "run"
    actor = save_tiny_actor(TEXTS, run / "actor", TinyModelConfig(hidden_size=32, num_layers=1, seed=3))
    (actor / "training_args.bin").write_bytes(b"not for the Hub")
    (actor / "checkpoint-10").mkdir()
    rows = [
        {"iteration": 0, "eval_accuracy": 0.5, "eval_seconds": 3.0},
        {"iteration": 5, "reward": 0.4},
        {"iteration": 10, "reward": 0.6, "eval_accuracy": 0.625, "eval_sampled_accuracy": 0.25},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run


def logits(model_dir: Path | str, model=None) -> torch.Tensor:
    model = model or AutoModelForCausalLM.from_pretrained(str(model_dir))
    ids = AutoTokenizer.from_pretrained(str(model_dir))("12 + 7 = 19", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def test_exported_model_loads_with_transformers_and_its_card_tells_the_run(run_dir, tmp_path):
    out = hub.export_model(run_dir / "actor", tmp_path / "export", datasets=["openai/gsm8k"])

    assert sorted(p.name for p in out.iterdir()) == [
        ".llmac.json",  # llmac's marker (`llmac export` wrote this folder); never uploaded
        "README.md",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    torch.testing.assert_close(logits(out), logits(run_dir / "actor"), rtol=0, atol=0)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "text-generation"
    assert "llmac" in card.data.tags and card.data.datasets == ["openai/gsm8k"]
    assert "| eval_accuracy | 0.5 | 0.625 |" in card.text  # first and last evaluation
    assert "| eval_sampled_accuracy |  | 0.25 |" in card.text  # not measured at the first
    assert "eval_seconds" not in card.text and "reward" not in card.text
    assert not list(tmp_path.glob(".export*"))  # no staging folder left behind


def test_lora_adapter_is_merged_into_its_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir = save_tiny_actor(
        TEXTS, tmp_path / "base", TinyModelConfig(hidden_size=32, num_layers=1, seed=4)
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)), lora)
    peft_model.save_pretrained(tmp_path / "adapter")

    out = hub.export_model(tmp_path / "adapter", tmp_path / "merged")

    assert not (out / "adapter_config.json").exists()
    expected = logits(base_dir, model=peft_model.eval())
    assert not torch.allclose(expected, logits(base_dir), atol=1e-4)  # the adapter matters
    torch.testing.assert_close(logits(out), expected, rtol=1e-5, atol=1e-5)
    assert ModelCard.load(out / "README.md").data.base_model == str(base_dir)


def test_model_folder_without_safetensors_is_refused_by_name(run_dir, tmp_path):
    actor = run_dir / "actor"
    (actor / "model.safetensors").rename(actor / "pytorch_model.bin")
    with pytest.raises(
        FileNotFoundError, match=r"actor: no \*\.safetensors weights \(found pytorch_model.bin"
    ):
        hub.export_model(actor, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_export_card_title_permissions_and_where_it_says_it_wrote(run_dir, tmp_path, capsys):
    out = tmp_path / "exports" / "tiny-actor"
    hub.main(["--source", str(run_dir / "actor"), "--output_dir", str(out)])
    assert f"to {out.resolve()}" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert "# tiny-actor\n" in card and str(tmp_path) not in card  # the folder's name, not a local path
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o644 & ~umask, path.name


def test_an_interrupted_export_leaves_the_previous_one_intact(run_dir, tmp_path, monkeypatch):
    out = hub.export_model(run_dir / "actor", tmp_path / "export")
    before = (out / "README.md").read_text()

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(hub, "model_card", crash)
    with pytest.raises(RuntimeError, match="killed mid-export"):
        hub.export_model(run_dir / "actor", tmp_path / "export", overwrite=True)
    assert (out / "README.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]  # no staging folder left


def test_exported_dataset_reads_back_with_load_dataset(tmp_path):
    rows = [{"question": f"q{i}", "steps": [f"s{i}", "Answer: 1"], "labels": [0.5, 1.0]} for i in range(7)]
    source = tmp_path / "labels.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))

    out = hub.export_dataset(source, tmp_path / "export")

    loaded = load_dataset(str(out), split="train")
    assert loaded.to_list() == rows
    card = DatasetCard.load(out / "README.md")
    assert card.data.configs[0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert "| `labels` |" in card.text


def test_empty_dataset_is_refused(tmp_path):
    source = tmp_path / "empty.jsonl"
    source.write_text("")
    with pytest.raises(DataError, match="empty.jsonl"):
        hub.export_dataset(source, tmp_path / "export")


def test_llmac_export_pushes_the_exported_folder(run_dir, tmp_path, monkeypatch):
    import huggingface_hub

    from llmac.cli import main

    RecordingHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
    out = tmp_path / "export"
    main(
        [
            "export",
            "--source",
            str(run_dir / "actor"),
            "--output_dir",
            str(out),
            "--push_to_hub",
            "me/tiny",
            "--private",
            "true",
        ]
    )

    assert [name for name, _ in RecordingHfApi.calls] == ["init", "create_repo", "upload_folder"]
    _, create = RecordingHfApi.calls[1]
    assert create == {"repo_id": "me/tiny", "repo_type": "model", "private": True, "exist_ok": True}
    _, upload = RecordingHfApi.calls[2]
    assert (
        upload["repo_id"] == "me/tiny"
        and upload["folder_path"] == str(out)
        and upload["repo_type"] == "model"
    )
    assert "README.md" in upload["files"] and "training_args.bin" not in upload["files"]
    assert upload["ignore_patterns"] == [".llmac.json"]  # the marker stays home
    card = ModelCard.load(out / "README.md")
    assert card.text.lstrip().startswith("# me/tiny") and 'from_pretrained("me/tiny")' in card.text

    RecordingHfApi.calls = []
    data = tmp_path / "rows.jsonl"
    data.write_text('{"question": "q", "answer": "1"}\n')
    main(
        [
            "export",
            "--source",
            str(data),
            "--output_dir",
            str(tmp_path / "data_export"),
            "--push_to_hub",
            "me/rows",
        ]
    )
    assert RecordingHfApi.calls[1][1]["repo_type"] == "dataset"
