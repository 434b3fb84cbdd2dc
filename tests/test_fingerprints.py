"""Content fingerprints, completeness checks and stage stamps: what makes a cached result reusable."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from model_copies import copy_with_new_mtimes, nudge_one_weight

import llmac
from llmac import fingerprints
from llmac.engines.hf import HFEngine
from llmac.fingerprints import (
    STAGE_STAMP,
    code_version,
    dataset_fingerprint,
    engine_model_fingerprint,
    is_complete_dataset,
    is_complete_model,
    model_fingerprint,
    reward_fingerprint,
    stage_done,
    write_stage_stamp,
)
from llmac.rewards import math_rewards


def truncate(path: Path, drop: int = 16) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-drop])


# -- model fingerprints ----------------------------------------------------------------------------
def test_model_fingerprint_follows_content_not_path_or_mtime(tiny_actor_dir, tmp_path):
    original = model_fingerprint(tiny_actor_dir)
    copy = copy_with_new_mtimes(tiny_actor_dir, tmp_path / "elsewhere" / "actor")
    (copy / "checkpoint-5").mkdir()  # a trainer's checkpoint does not change the saved model
    (copy / "checkpoint-5" / "model.safetensors").write_bytes(b"x")
    (copy / STAGE_STAMP).write_text("{}")  # nor do hidden files (stamps, markers)
    assert model_fingerprint(copy) == original

    nudge_one_weight(copy)
    nudged = model_fingerprint(copy)
    assert nudged != original

    for name in ("config.json", "tokenizer_config.json", "generation_config.json"):
        other = copy_with_new_mtimes(tiny_actor_dir, tmp_path / f"edited-{name}")
        settings = json.loads((other / name).read_text())
        settings["llmac_test_field"] = 1
        (other / name).write_text(json.dumps(settings))
        assert model_fingerprint(other) not in (original, nudged), name


def test_big_weight_files_are_keyed_by_size_mtime_and_header(tiny_actor_dir, tmp_path):
    """Above ``content_limit`` (here 0 bytes) weights are not read: copying with mtimes kept keeps
    the fingerprint, a plain copy changes it (the stage is redone), a rewrite changes it."""
    big = functools.partial(model_fingerprint, content_limit=0)
    original = big(tiny_actor_dir)
    kept = tmp_path / "cp-p"
    shutil.copytree(tiny_actor_dir, kept, copy_function=shutil.copy2)
    assert big(kept) == original
    assert big(copy_with_new_mtimes(tiny_actor_dir, tmp_path / "cp")) != original

    rewritten = tmp_path / "rewritten"
    shutil.copytree(tiny_actor_dir, rewritten, copy_function=shutil.copy2)
    nudge_one_weight(rewritten)
    assert big(rewritten) != original

    # The one blind spot: same size, same header, and the old mtime restored by hand.
    blind = tmp_path / "blind"
    shutil.copytree(tiny_actor_dir, blind, copy_function=shutil.copy2)
    nudge_one_weight(blind, keep_mtime=True)
    assert big(blind) == original
    assert model_fingerprint(blind) != model_fingerprint(tiny_actor_dir)  # content-keyed: seen


def test_names_that_are_not_folders_are_keyed_by_name():
    assert model_fingerprint("tiny") == model_fingerprint("tiny")
    assert model_fingerprint("tiny") != model_fingerprint("org/other-model")


def test_engine_fingerprint_is_its_folder_until_weights_are_pushed(tiny_actor_dir):
    engine = HFEngine(tiny_actor_dir, dtype="float32")
    assert engine_model_fingerprint(engine) == model_fingerprint(tiny_actor_dir)
    state = {k: v.clone() for k, v in engine.model.state_dict().items()}
    engine.load_weights(state)
    same_weights = engine_model_fingerprint(engine)
    assert same_weights.startswith("weights:")
    name = sorted(state)[0]
    state[name].view(-1)[0] += 1.0
    engine.load_weights(state)
    assert engine_model_fingerprint(engine) not in (same_weights, None)
    assert engine_model_fingerprint(object()) is None


# -- dataset fingerprints --------------------------------------------------------------------------
def test_dataset_fingerprint_follows_rows(tmp_path):
    rows = {"question": ["1+1", "2+2"], "answer": ["2", "4"]}
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "a"))
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "b"))  # another random datasets fingerprint
    assert dataset_fingerprint(tmp_path / "a") == dataset_fingerprint(tmp_path / "b")
    Dataset.from_dict({**rows, "answer": ["2", "5"]}).save_to_disk(str(tmp_path / "c"))
    assert dataset_fingerprint(tmp_path / "c") != dataset_fingerprint(tmp_path / "a")

    DatasetDict({"train": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "d"))
    DatasetDict({"train": Dataset.from_dict({**rows, "answer": ["2", "5"]})}).save_to_disk(
        str(tmp_path / "e")
    )
    assert dataset_fingerprint(tmp_path / "d") != dataset_fingerprint(tmp_path / "e")
    with pytest.raises(FileNotFoundError):
        dataset_fingerprint(tmp_path / "missing")


# -- completeness ----------------------------------------------------------------------------------
def test_a_model_folder_is_complete_only_when_every_part_is_intact(tiny_actor_dir, tmp_path):
    assert is_complete_model(tiny_actor_dir)
    damaged = {
        "truncated weights": lambda f: truncate(f / "model.safetensors"),
        "no weights": lambda f: (f / "model.safetensors").unlink(),
        "no config": lambda f: (f / "config.json").unlink(),
        "config cut short": lambda f: (f / "config.json").write_text('{"model_type": "qw'),
        "no tokenizer": lambda f: (f / "tokenizer.json").unlink(),
        "tokenizer cut short": lambda f: truncate(f / "tokenizer.json", drop=100),
    }
    for what, damage in damaged.items():
        folder = copy_with_new_mtimes(tiny_actor_dir, tmp_path / what.replace(" ", "-"))
        damage(folder)
        assert not is_complete_model(folder), what
    assert not is_complete_model(tmp_path / "missing")


def test_a_sharded_model_needs_every_shard(tiny_actor_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_actor_dir).save_pretrained(sharded, max_shard_size="500KB")
    AutoTokenizer.from_pretrained(tiny_actor_dir).save_pretrained(sharded)
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").is_file()
    assert is_complete_model(sharded)
    shards[-1].unlink()
    assert not is_complete_model(sharded)


def test_a_dataset_is_complete_only_when_it_loads(tmp_path):
    folder = tmp_path / "rows"
    Dataset.from_dict({"x": list(range(1000))}).save_to_disk(str(folder))
    assert is_complete_dataset(folder)
    (arrow,) = folder.glob("*.arrow")
    truncate(arrow, drop=200)
    assert not is_complete_dataset(folder)

    no_state = tmp_path / "no_state"
    Dataset.from_dict({"x": [1]}).save_to_disk(str(no_state))
    (no_state / "state.json").unlink()
    assert not is_complete_dataset(no_state)
    assert not is_complete_dataset(tmp_path / "missing")


# -- code version and stamps -----------------------------------------------------------------------
def test_code_version_changes_with_any_llmac_source(tmp_path, monkeypatch):
    package = Path(llmac.__file__).parent
    copy = tmp_path / "llmac"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(llmac, "__file__", str(copy / "__init__.py"))
    compute = code_version.__wrapped__
    before = compute()
    assert before == code_version() and before.startswith(llmac.__version__ + "+")
    with open(copy / "steps.py", "a") as stream:
        stream.write("\n# an edit\n")
    assert compute() != before


def test_a_stage_is_done_only_with_its_key_and_a_complete_artifact(tiny_actor_dir, tmp_path):
    model = copy_with_new_mtimes(tiny_actor_dir, tmp_path / "model")
    key = fingerprints.inputs_key(model=model_fingerprint(model), steps=10)
    assert key == fingerprints.inputs_key(steps=10, model=model_fingerprint(model))
    assert key != fingerprints.inputs_key(model=model_fingerprint(model), steps=11)
    assert not stage_done(model, key)  # no stamp yet
    write_stage_stamp(model, key, state="running")
    assert not stage_done(model, key)
    write_stage_stamp(model, key)
    assert stage_done(model, key) and stage_done(model, key, kind="model")
    assert not stage_done(model, "another key")
    truncate(model / "model.safetensors")
    assert not stage_done(model, key)

    rows = tmp_path / "rows"
    Dataset.from_dict({"x": list(range(100))}).save_to_disk(str(rows))
    write_stage_stamp(rows, key)
    assert stage_done(rows, key)
    truncate(next(rows.glob("*.arrow")), drop=100)
    assert not stage_done(rows, key)

    run = tmp_path / "run"
    shutil.copytree(tiny_actor_dir, run / "actor")
    write_stage_stamp(run, key)
    assert stage_done(run, key, parts=["actor"])
    assert not stage_done(run, key, parts=["actor", "critic"])


# -- rewards ---------------------------------------------------------------------------------------
def parity(texts, golds, modulus=2):
    return [float(len(t) % modulus == 0) for t in texts]


def odd(texts, golds):
    return [float(len(t) % 2 == 1) for t in texts]


def test_reward_fingerprint_names_the_function_and_its_parameters():
    math = reward_fingerprint(math_rewards)
    assert math["registered_as"] == ["math"] and math["source_sha256"]
    assert reward_fingerprint(math_rewards) == math
    assert reward_fingerprint(parity) != math
    assert reward_fingerprint(parity) != reward_fingerprint(odd)
    assert reward_fingerprint(functools.partial(parity, modulus=3)) != reward_fingerprint(
        functools.partial(parity, modulus=2)
    )


class Threshold:
    def __init__(self, at: float) -> None:
        self.at = at

    def __call__(self, texts, golds):
        return [float(len(t) >= self.at) for t in texts]


def test_reward_objects_are_keyed_by_class_and_attributes():
    assert reward_fingerprint(Threshold(3)) == reward_fingerprint(Threshold(3))
    assert reward_fingerprint(Threshold(3)) != reward_fingerprint(Threshold(4))
