"""Output folders: no command deletes what llmac did not write, replaces an llmac output without
``--overwrite``, or writes over its own input; a final save killed at any point leaves the old folder
or the new one, whole, at its path."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk
from transformers import AutoModelForCausalLM

from llmac import hub, outputs
from llmac.errors import OutputError
from llmac.models import TinyModelConfig, save_tiny_actor
from llmac.outputs import MARKER, check_output, publish_folder, read_marker, save_final_folder, write_marker
from llmac.rollouts import save_dataset_atomically

TEXTS = ["12 + 7 = 19\n19 - 4 = 15\nAnswer: 15", "What is 3 + 4?"]
SMALL = dict(hidden_size=32, num_layers=1)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its content's hash: what "nothing deleted or changed" compares."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def first_weight(model_dir: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return model.get_input_embeddings().weight.detach().clone()


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished PPO run as `llmac ppo` leaves it: actor/, checkpoints/, metrics.jsonl, markers."""
    run = tmp_path / "runs" / "x"
    actor = save_tiny_actor(TEXTS, run / "actor", TinyModelConfig(**SMALL, seed=3))
    write_marker(actor, "ppo", complete=True)
    state = run / "checkpoints" / "iter-000010"
    state.mkdir(parents=True)
    (state / "trainer_state.json").write_text('{"iteration": 10}')
    (run / "metrics.jsonl").write_text('{"iteration": 10, "eval_accuracy": 0.5}\n')
    write_marker(run, "ppo", complete=True)
    return run


# -- the reported bug: export into the run it exports from ---------------------------------------------


@pytest.mark.parametrize("overwrite", [[], ["--overwrite", "true"]], ids=["plain", "overwrite"])
def test_export_into_the_run_of_its_source_is_refused_and_deletes_nothing(run_dir, overwrite):
    before = snapshot(run_dir.parent)
    argv = ["--source", str(run_dir / "actor"), "--output_dir", str(run_dir), *overwrite]
    with pytest.raises(OutputError, match=r"contains .*actor, an input of `llmac export`"):
        hub.main(argv)
    assert snapshot(run_dir.parent) == before
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["x"]


@pytest.mark.parametrize("where", ["actor", "actor/export"])
def test_export_onto_or_inside_its_source_is_refused(run_dir, where):
    before = snapshot(run_dir)
    with pytest.raises(OutputError, match="is inside" if "/" in where else r"actor is .*actor, an input"):
        hub.export_model(run_dir / "actor", run_dir / where, overwrite=True)
    assert snapshot(run_dir) == before


def test_a_folder_llmac_did_not_write_is_refused_even_with_overwrite(run_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("notes.txt", "a.txt", "b.txt", "c.txt", "d.txt"):
        (mine / name).write_text(name)
    before = snapshot(mine)
    for overwrite in (False, True):
        with pytest.raises(OutputError) as refused:
            hub.export_model(run_dir / "actor", mine, overwrite=overwrite)
        message = str(refused.value)
        assert "\n" not in message and str(mine) in message and "did not write" in message
        assert "a.txt, b.txt, c.txt, d.txt and 1 more" in message
    assert snapshot(mine) == before and leftovers(tmp_path) == []


def test_an_llmac_output_is_refused_without_overwrite_and_replaced_with_it(run_dir, tmp_path):
    out = hub.export_model(run_dir / "actor", tmp_path / "export")
    first = snapshot(out)
    with pytest.raises(OutputError, match="pass --overwrite to replace it"):
        hub.export_model(run_dir / "actor", out, datasets=["openai/gsm8k"])
    assert snapshot(out) == first
    hub.export_model(run_dir / "actor", out, datasets=["openai/gsm8k"], overwrite=True)
    assert (
        snapshot(out)["README.md"] != first["README.md"] and "openai/gsm8k" in (out / "README.md").read_text()
    )
    assert read_marker(out)["command"] == "export" and leftovers(tmp_path) == []


def test_a_file_is_never_taken_for_an_output_folder(run_dir, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"precious")
    with pytest.raises(OutputError, match="is a file"):
        hub.export_model(run_dir / "actor", target, overwrite=True)
    assert target.read_bytes() == b"precious"


# -- datasets over their own input -------------------------------------------------------------------


def rows_dataset(tmp_path: Path) -> Path:
    """A dataset llmac wrote, beside a stand-in model folder (the check comes before any model loads)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    path = tmp_path / "rows"
    save_dataset_atomically(Dataset.from_dict({"question": ["1 + 1 ="], "answer": ["2"]}), path, "generate")
    return path


def test_generate_over_its_own_input_data_is_refused_before_any_model_loads(tmp_path):
    from llmac.generate import generate_main

    data = rows_dataset(tmp_path)
    before = snapshot(data)
    argv = ["--model_name_or_path", str(tmp_path / "model"), "--task", "file", "--split", "train",
            "--train_path", str(data), "--output_dir", str(data), "--overwrite", "true"]  # fmt: skip
    with pytest.raises(OutputError, match=r"rows is .*rows, an input of `llmac generate`"):
        generate_main(argv)
    assert snapshot(data) == before


@pytest.mark.parametrize("command", ["score", "label"])
def test_critic_score_and_label_over_their_input_are_refused(tmp_path, command):
    from llmac.critic.cli import label_main, score_main

    data = rows_dataset(tmp_path)
    before = snapshot(data)
    with pytest.raises(OutputError, match=f"an input of `llmac critic {command}`"):
        if command == "score":
            score_main(["--critic", str(tmp_path / "model"), "--data", str(data), "--output", str(data)])
        else:
            label_main(["--model_name_or_path", str(tmp_path / "model"), "--solutions", str(data),
                        "--output_dir", str(data / "labels")])  # fmt: skip
    assert snapshot(data) == before


def test_a_shard_folder_holding_other_files_is_refused_and_kept(tmp_path):
    from llmac.generate import generate_main

    shards = tmp_path / "out.shards"
    shards.mkdir()
    (shards / "mine.txt").write_text("keep me")
    rows_dataset(tmp_path)  # and a model folder
    with pytest.raises(OutputError, match=r"out\.shards holds files llmac did not write \(mine\.txt\)"):
        generate_main(
            ["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "out")]
        )
    assert (shards / "mine.txt").read_text() == "keep me"


def test_export_dataset_over_its_source_is_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "rows.jsonl").write_text('{"question": "q", "answer": "1"}\n')
    with pytest.raises(OutputError, match="contains"):
        hub.export_dataset(folder / "rows.jsonl", folder, overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["rows.jsonl"]


def test_a_dataset_save_refuses_without_overwrite_and_replaces_with_it(tmp_path):
    path = tmp_path / "out"
    save_dataset_atomically(Dataset.from_dict({"x": [1, 2]}), path, "critic score")
    with pytest.raises(OutputError, match="`llmac critic score`"):
        save_dataset_atomically(Dataset.from_dict({"x": [3]}), path, "critic score")
    assert load_from_disk(str(path))["x"] == [1, 2]
    save_dataset_atomically(Dataset.from_dict({"x": [3]}), path, "critic score", overwrite=True)
    assert load_from_disk(str(path))["x"] == [3] and leftovers(tmp_path) == []


def test_inspect_replaces_only_its_own_page(tmp_path):
    from llmac.critic.cli import check_inspector_output
    from llmac.critic.inspector import write_inspector

    page = write_inspector(tmp_path / "page.html", [{"question": "q", "steps": ["a"], "values": [0.5]}])
    with pytest.raises(OutputError, match="--overwrite"):
        check_inspector_output(page, overwrite=False, sources=[])
    check_inspector_output(page, overwrite=True, sources=[])
    notes = tmp_path / "notes.html"
    notes.write_text("<html>mine</html>")
    with pytest.raises(OutputError, match="not a page"):
        check_inspector_output(notes, overwrite=True, sources=[])


# -- the rules, one by one ---------------------------------------------------------------------------


def test_check_output_says_new_resume_or_replace(tmp_path):
    has_checkpoint = outputs.has_trainer_checkpoint
    assert check_output(tmp_path / "absent", "sft") == "new"
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", "sft", resumable=has_checkpoint) == "new"

    run = tmp_path / "run"
    outputs.claim_output(run, "sft")  # an unfinished run (killed before its first checkpoint)
    (run / "runs").mkdir()
    assert check_output(run, "sft", resumable=has_checkpoint) == "resume"
    assert check_output(run, "sft", overwrite=True, resumable=has_checkpoint) == "replace"
    with pytest.raises(OutputError, match="`llmac sft`"):
        check_output(run, "critic train", resumable=has_checkpoint)  # another command's run

    write_marker(run, "sft", complete=True)  # finished, nothing to resume from
    with pytest.raises(OutputError, match="finished"):
        check_output(run, "sft", resumable=has_checkpoint)
    (run / "checkpoint-4").mkdir()  # finished with a checkpoint: a rerun resumes (and may go further)
    assert check_output(run, "sft", resumable=has_checkpoint) == "resume"
    with pytest.raises(OutputError):
        check_output(run, "sft")  # a command that does not resume in its output


def test_training_with_overwrite_works_beside_the_old_run_until_it_is_replaced(tmp_path):
    old = tmp_path / "sft"
    save_final_folder(old, "sft", lambda folder: (folder / "model.safetensors").write_text("old"))
    work = outputs.prepare_output(old, "sft", overwrite=True, resumable=outputs.has_trainer_checkpoint)
    assert work == tmp_path / ".sft.replacing" and read_marker(work)["command"] == "sft"
    (work / "checkpoint-2").mkdir()
    (work / "checkpoint-2" / "state.json").write_text("{}")
    assert (old / "model.safetensors").read_text() == "old"  # whole until the new one is saved

    save_final_folder(old, "sft", lambda folder: (folder / "model.safetensors").write_text("new"), work=work)
    assert (old / "model.safetensors").read_text() == "new"
    assert (old / "checkpoint-2" / "state.json").is_file()  # the new run's checkpoints came along
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]


def test_a_final_save_keeps_the_runs_checkpoints_and_logs(tmp_path):
    run = tmp_path / "critic"
    outputs.claim_output(run, "critic train")
    (run / "checkpoint-30").mkdir()
    (run / "checkpoint-30" / "model.safetensors").write_text("checkpoint weights")
    (run / "eval_results.json").write_text("{}")
    (run / "config.json").write_text("half of an old save")  # a model file: the new save replaces it

    save_final_folder(run, "critic train", lambda f: (f / "config.json").write_text("new"), work=run)
    assert (run / "config.json").read_text() == "new"
    assert (run / "checkpoint-30" / "model.safetensors").read_text() == "checkpoint weights"
    assert (run / "eval_results.json").is_file() and read_marker(run)["complete"] is True


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_publish_replaces_an_llmac_folder_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    final = tmp_path / "out"
    save_final_folder(final, "export", lambda f: (f / "a.txt").write_text("old"))
    (final / "only-in-old.txt").write_text("x")
    save_final_folder(final, "export", lambda f: (f / "a.txt").write_text("new"))
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "a.txt"]
    assert (final / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_publish_never_deletes_a_folder_llmac_did_not_write(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "mine.txt").write_text("keep")
    staging = tmp_path / ".out.tmp-1"
    staging.mkdir()
    with pytest.raises(OutputError, match="did not write"):
        publish_folder(staging, final, "export")
    assert (final / "mine.txt").read_text() == "keep"


def test_a_folder_renamed_aside_by_a_killed_run_is_put_back(tmp_path):
    aside = tmp_path / ".out.old-123"
    aside.mkdir()
    (aside / "a.txt").write_text("old")
    write_marker(aside, "export", complete=True)
    assert check_output(tmp_path / "out", "export", overwrite=True) == "replace"
    assert (tmp_path / "out" / "a.txt").read_text() == "old" and not aside.exists()


def test_only_llmacs_own_dead_leftovers_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    ours = tmp_path / ".out.tmp-aaa"
    ours.mkdir()
    (ours / MARKER).write_text(
        json.dumps({"command": "export", "host": os.uname().nodename, "pid": dead_pid})
    )
    running = tmp_path / ".out.tmp-bbb"
    running.mkdir()
    write_marker(running, "export")  # this process: still running
    users = tmp_path / ".out.tmp-ccc"
    users.mkdir()
    (users / "x").write_text("not ours")
    outputs.remove_leftovers(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp-bbb", ".out.tmp-ccc"]


def test_a_work_folder_is_removed_only_if_llmac_made_it(tmp_path):
    mine = tmp_path / "x.shards"
    mine.mkdir()
    (mine / "notes").write_text("keep")
    outputs.remove_own_folder(mine, "generate", stamp="inputs.json")
    assert (mine / "notes").is_file()
    (mine / "inputs.json").write_text("{}")
    outputs.remove_own_folder(mine, "generate", stamp="inputs.json")
    assert not mine.exists()


# -- a kill at any point of a final save ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
KILL = "os.kill(os.getpid(), signal.SIGKILL)"


def run_killed(script: str) -> None:
    """Run ``script`` in a fresh interpreter; it must die by SIGKILL (the patch it sets up fires)."""
    code = "import os, signal, sys\nfrom pathlib import Path\n" + script
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, f"the save was not killed (exit {done.returncode}):\n{done.stderr[-3000:]}"


def kill_after(target: str, attribute: str) -> str:
    """Script lines replacing ``target.attribute`` with a version that runs, then kills the process."""
    return (
        f"import {target} as _module\n_real = _module.{attribute}\n"
        f"def _killing(*a, **k):\n    _real(*a, **k)\n    {KILL}\n"
        f"_module.{attribute} = _killing\n"
    )


MODEL_KILL_POINTS = {
    # after the first weight file of the new model is written into the staging folder
    "while-writing": kill_after("transformers.modeling_utils", "safe_save_file"),
    # the new folder complete, not yet swapped in
    "before-swap": f"import llmac.outputs as _o\n_o._exchange = lambda a, b: {KILL}\n",
    # the new folder swapped in, the old one not yet deleted
    "after-swap": kill_after("llmac.outputs", "_exchange"),
    # no renameat2: the old folder renamed aside, the new one not yet in place
    "rename-aside": (
        "import llmac.outputs as _o\n_o._exchange = lambda a, b: False\n_rename = os.rename\n"
        "def _once(a, b):\n    _rename(a, b)\n"
        f"    if '.old-' in str(b):\n        {KILL}\n"
        "_o.os.rename = _once\n"
    ),
}


@pytest.mark.parametrize("point", MODEL_KILL_POINTS)
def test_a_killed_final_model_save_leaves_the_old_or_the_new_model_loadable(tmp_path, point):
    """The helper every final model save goes through (SFT, critic, PPO actor/ and critic/)."""
    final = tmp_path / "actor"
    save_tiny_actor(TEXTS, tmp_path / "old", TinyModelConfig(**SMALL, seed=1))
    save_tiny_actor(TEXTS, tmp_path / "new", TinyModelConfig(**SMALL, seed=2))
    old, new = first_weight(tmp_path / "old"), first_weight(tmp_path / "new")

    def copy_from(source: Path):
        return lambda folder: [(folder / p.name).write_bytes(p.read_bytes()) for p in source.iterdir()]

    save_final_folder(final, "ppo", copy_from(tmp_path / "old"))
    run_killed(
        MODEL_KILL_POINTS[point]
        + "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        + "from llmac.outputs import save_final_folder\n"
        + f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'new')!r})\n"
        + f"tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / 'new')!r})\n"
        + "save = lambda f: (model.save_pretrained(f), tokenizer.save_pretrained(f))\n"
        + f"save_final_folder({str(final)!r}, 'ppo', save)\n"
    )
    outputs.check_output(final, "ppo", resumable=lambda _: True)  # what the next run does first
    expected = new if point == "after-swap" else old
    torch.testing.assert_close(first_weight(final), expected, rtol=0, atol=0)
    assert read_marker(final)["complete"] is True
    outputs.remove_leftovers(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actor", "new", "old"]


@pytest.mark.parametrize("point", ["while-writing", "after-swap"])
def test_a_killed_export_leaves_the_old_or_the_new_export(run_dir, tmp_path, point):
    out = hub.export_model(run_dir / "actor", tmp_path / "export")
    before = snapshot(out)
    patch = kill_after("shutil", "copy2") if point == "while-writing" else MODEL_KILL_POINTS[point]
    run_killed(
        patch + "from llmac import hub\n"
        f"hub.export_model({str(run_dir / 'actor')!r}, {str(out)!r}, datasets=['d/new'], overwrite=True)\n"
    )
    if point == "while-writing":
        assert snapshot(out) == before
    else:
        assert "d/new" in (out / "README.md").read_text()
    torch.testing.assert_close(first_weight(out), first_weight(run_dir / "actor"), rtol=0, atol=0)
    outputs.remove_leftovers(out)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("point", ["while-writing", "before-swap"])
def test_a_killed_dataset_save_leaves_the_old_dataset(tmp_path, point):
    path = tmp_path / "rollouts"
    save_dataset_atomically(Dataset.from_dict({"x": list(range(100))}), path, "generate")
    patch = (
        "import datasets\n_real = datasets.Dataset.save_to_disk\n"
        f"def _killing(self, *a, **k):\n    _real(self, *a, **k)\n    {KILL}\n"
        "datasets.Dataset.save_to_disk = _killing\n"
        if point == "while-writing"
        else MODEL_KILL_POINTS[point]
    )
    run_killed(
        patch + "from datasets import Dataset\nfrom llmac.rollouts import save_dataset_atomically\n"
        f"save_dataset_atomically(Dataset.from_dict({{'x': [7]}}), {str(path)!r}, 'generate', overwrite=True)\n"
    )
    assert load_from_disk(str(path))["x"] == list(range(100))
    outputs.remove_leftovers(path)
    assert leftovers(tmp_path) == []


# -- each final save goes through save_final_folder ---------------------------------------------------


class Recorder:
    def __init__(self, monkeypatch, module) -> None:
        self.calls: list[tuple[Path, str, Path | None]] = []
        real = outputs.save_final_folder

        def recording(final, command, save, is_main=True, wait=None, work=None):
            self.calls.append((Path(final), command, None if work is None else Path(work)))
            return real(final, command, save, is_main, wait, work)

        monkeypatch.setattr(module, "save_final_folder", recording)


def test_sft_saves_its_final_model_through_the_atomic_helper(tmp_path, monkeypatch):
    from llmac import sft
    from llmac.cli import main

    recorder = Recorder(monkeypatch, sft)
    out = tmp_path / "sft"
    recipe = REPO / "recipes" / "sft" / "tiny_arithmetic.yaml"
    main(["sft", "--config", str(recipe), "--num_train", "16", "--per_device_train_batch_size", "8",
          "--max_steps", "1", "--save_steps", "100", "--output_dir", str(out)])  # fmt: skip
    assert recorder.calls == [(out, "sft", out)]
    marker = read_marker(out)
    assert (marker["command"], marker["complete"]) == ("sft", True)
    AutoModelForCausalLM.from_pretrained(str(out))
    assert leftovers(tmp_path) == []


def test_sft_refuses_a_folder_llmac_did_not_write_before_building_anything(tmp_path, monkeypatch):
    from llmac import sft

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.safetensors").write_bytes(b"my own weights")
    monkeypatch.setattr(sft, "build_actor", lambda *a, **k: pytest.fail("built a model before checking"))
    with pytest.raises(OutputError, match="did not write"):
        sft.main(["--output_dir", str(mine), "--overwrite", "true"])
    assert (mine / "model.safetensors").read_bytes() == b"my own weights"


def test_critic_training_saves_through_the_atomic_helper(tmp_path, monkeypatch, arithmetic_rows):
    from synthetic_labels import labelled_dataset

    from llmac.config import ModelConfig
    from llmac.critic import training

    actor = save_tiny_actor(
        list(arithmetic_rows["question"][:64]) + list(arithmetic_rows["solution"][:64]),
        tmp_path / "actor",
        TinyModelConfig(**SMALL),
    )
    labelled_dataset(arithmetic_rows.select(range(16))).save_to_disk(str(tmp_path / "labels"))
    recorder = Recorder(monkeypatch, training)
    out = tmp_path / "critic"
    args = training.CriticConfig(output_dir=str(out), max_steps=1, per_device_train_batch_size=4,
                                 eval_fraction=0.0, report_to="none", save_strategy="no")  # fmt: skip
    data = training.CriticDataConfig(init_from=str(actor), train_data=str(tmp_path / "labels"))
    training.train_critic(ModelConfig(), data, args)
    assert recorder.calls == [(out, "critic train", out)]
    assert read_marker(out)["complete"] is True and (out / "model.safetensors").is_file()
    assert leftovers(tmp_path) == []


def test_ppo_saves_actor_and_critic_through_the_atomic_helper(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from llmac.ppo import trainer as ppo

    actor = save_tiny_actor(TEXTS, tmp_path / "a", TinyModelConfig(**SMALL))
    policy, value = (AutoModelForCausalLM.from_pretrained(str(actor)) for _ in range(2))

    fake = SimpleNamespace(
        config=SimpleNamespace(output_dir=str(tmp_path / "run")),
        accelerator=SimpleNamespace(
            unwrap_model=lambda m: m, is_main_process=True, wait_for_everyone=lambda: None
        ),
        model=SimpleNamespace(policy=policy, value=value),
        policy_weights=lambda: policy.state_dict(),
        tokenizer=AutoTokenizer.from_pretrained(str(tmp_path / "a")),
    )
    from llmac.rl import saving

    monkeypatch.setattr(ppo, "full_state_dict", lambda model, accelerator: model.state_dict())
    recorder = Recorder(monkeypatch, saving)
    ppo.PPOTrainer.save(fake)
    ppo.PPOTrainer.save(fake)  # a resumed finished run saves again: replaces its own folders
    run = tmp_path / "run"
    assert [(f, c) for f, c, _ in recorder.calls] == [(run / "actor", "ppo"), (run / "critic", "ppo")] * 2
    for name in ("actor", "critic"):
        AutoModelForCausalLM.from_pretrained(str(run / name))
    assert sorted(p.name for p in run.iterdir()) == ["actor", "critic"]


def test_a_checkpoint_saved_again_is_swapped_in_whole(tmp_path):
    from types import SimpleNamespace

    from llmac import checkpoints

    def accelerator(weights: str):
        save_state = lambda folder: (Path(folder) / "model.bin").write_text(weights)  # noqa: E731
        return SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None, save_state=save_state)

    checkpoints.save_checkpoint(accelerator("first"), tmp_path, 10, {"cursor": 1})
    checkpoints.save_checkpoint(accelerator("again"), tmp_path, 10, {"cursor": 2})
    latest = checkpoints.latest_checkpoint(tmp_path)
    assert (latest / "model.bin").read_text() == "again"
    assert json.loads((latest / checkpoints.STATE_FILE).read_text()) == {"iteration": 10, "cursor": 2}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter-000010"]
