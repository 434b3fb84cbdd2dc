"""Every MCTS export, saved and loaded back from disk, drives one optimizer step of the trainer that
consumes it: the weights move and the loss is finite (issue 17's "every export loads back and trains
for a step")."""

from __future__ import annotations

import json
import math
import string
from functools import partial
from pathlib import Path

import pytest
import torch
from datasets import Dataset, load_from_disk
from safetensors.torch import load_file
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from llmac.config import ModelConfig
from llmac.critic.model import init_critic
from llmac.critic.training import CriticConfig, CriticDataConfig, train_critic
from llmac.critique.format import StepJudgement, get_critique_format
from llmac.data.loading import format_prompt
from llmac.data.tasks import TaskConfig
from llmac.mcts.exports import (
    rstar_pair_rows,
    step_preference_rows,
    to_dpo_rows,
    value_label_rows,
    verified_solution_rows,
)
from llmac.mcts.trajectories import DEFAULT_REVISION, critique_pair_rows, revision_rows, revision_sft_rows
from llmac.mcts.tree import StepSample, Tree
from llmac.models import TinyModelConfig, load_actor, load_tokenizer, save_tiny_actor
from llmac.sft import run_sft

QUESTION = "(3 + 4) * 2 = ?"
# One token per character: every export's text and the critique layouts encode.
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"
# What every trainer here shares: one step, a learning rate large enough to move every weight.
ONE_STEP = dict(max_steps=1, learning_rate=1e-2, lr_scheduler_type="constant", warmup_steps=0,
                logging_steps=1, report_to="none", disable_tqdm=True, seed=0)  # fmt: skip


def sample(text: str, ends: bool = False) -> StepSample:
    return StepSample(text, [ord(c) for c in text], ends)


def search_tree() -> Tree:
    """root -> "3 + 4 = 7" -> {"7 * 2 = 14" -> {"Answer: 14" right, "Answer: 15" wrong},
    "7 * 2 = 15" -> "Answer: 15" wrong, "7 + 2 = 9" (evaluated)}; root -> "3 + 4 = 8" -> "Answer: 16"
    wrong."""
    tree = Tree(QUESTION, "14", QUESTION)
    good, bad = tree.expand(tree.root, [sample("3 + 4 = 7\n"), sample("3 + 4 = 8\n")])
    steps = [sample("7 * 2 = 14\n"), sample("7 * 2 = 15\n"), sample("7 + 2 = 9\n")]
    times_right, times_wrong, plus = tree.expand(good, steps)
    tree.backup(plus, -0.5)  # evaluated, never expanded: no terminal below it
    right, wrong = tree.expand(times_right, [sample("Answer: 14", True), sample("Answer: 15", True)])
    (wrong_too,) = tree.expand(times_wrong, [sample("Answer: 15", True)])
    (wrong_early,) = tree.expand(bad, [sample("Answer: 16", True)])
    for node, ok in [(right, True), (wrong, False), (wrong_too, False), (wrong_early, False)]:
        tree.backup(node, tree.set_verdict(node, float(ok), ok))
    return tree


def saved(dataset: Dataset, folder: Path) -> Path:
    """``dataset`` saved to ``folder``, checked to load back unchanged and to have rows to train on."""
    assert len(dataset) > 0
    dataset.save_to_disk(str(folder))
    assert load_from_disk(str(folder)).to_dict() == dataset.to_dict()
    return folder


@pytest.fixture(scope="module")
def actor(tmp_path_factory) -> Path:
    """A freshly initialised 1-layer tiny Qwen2 and its character tokenizer, saved (built in < 1 s)."""
    config = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position_embeddings=1024)  # fmt: skip
    return save_tiny_actor([ALPHABET], tmp_path_factory.mktemp("actor"), config)


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors both hold that differ; every tensor of ``after`` must be finite."""
    assert all(torch.isfinite(t).all() for t in after.values())
    return sorted(name for name in before.keys() & after.keys() if not torch.equal(before[name], after[name]))


def step_loss(history: list[dict]) -> float:
    (logged,) = [entry["loss"] for entry in history if "loss" in entry]
    return logged


def sft_args(output_dir: Path, **overrides) -> SFTConfig:
    return SFTConfig(output_dir=str(output_dir), per_device_train_batch_size=8, bf16=False, max_length=1024,
                     **{**ONE_STEP, **overrides})  # fmt: skip


def assert_sft_step(actor: Path, out: Path) -> None:
    """``llmac sft`` saved a model whose weights differ from the actor's after one finite-loss step."""
    (state,) = out.glob("checkpoint-*/trainer_state.json")
    assert state.parent.name == "checkpoint-1"
    # A fresh model predicts close to uniformly: the first loss is about log(vocabulary size).
    loss = step_loss(json.loads(state.read_text())["log_history"])
    assert loss == pytest.approx(math.log(len(load_tokenizer(actor))), abs=0.05)
    trained, initial = load_file(out / "model.safetensors"), load_file(actor / "model.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in changed(initial, trained)


# ---------------------------------------------------------------------------------------------- critic


def test_value_labels_train_the_critic_for_a_step(actor, tmp_path):
    labels = saved(value_label_rows([search_tree()]), tmp_path / "labels")
    args = CriticConfig(output_dir=str(tmp_path / "critic"), per_device_train_batch_size=8, eval_fraction=0.0,
                        save_strategy="no", **ONE_STEP)  # fmt: skip
    trainer = train_critic(
        ModelConfig(), CriticDataConfig(init_from=str(actor), train_data=str(labels)), args
    )
    assert trainer.state.global_step == 1
    assert step_loss(trainer.state.log_history) == pytest.approx(math.log(2), abs=1e-4)  # V = 0.5 at start
    # The value head starts at zero, so the first step moves it alone (the backbone's gradient is zero).
    initial = init_critic(actor).state_dict()
    assert changed(initial, load_file(tmp_path / "critic" / "model.safetensors")) == [
        "score.bias",
        "score.weight",
    ]


# ---------------------------------------------------------------------------------------------- SFT


def test_verified_solutions_sft_the_actor_for_a_step(actor, tmp_path):
    rows = verified_solution_rows([search_tree()])
    assert rows["solution"] == ["3 + 4 = 7\n7 * 2 = 14\nAnswer: 14"]
    solutions = saved(rows, tmp_path / "solutions")
    task = TaskConfig(task="file", train_path=str(solutions), solution_field="solution", num_train=0)
    out = tmp_path / "sft"
    run_sft(
        ModelConfig(model_name_or_path=str(actor)), task, sft_args(out, save_strategy="steps", save_steps=1)
    )
    assert_sft_step(actor, out)


def critique_sft_rows(pairs: Dataset, format_name: str = "verbose") -> Dataset:
    """MMC pairs as critique SFT data (as ``llmac critique sft`` writes it): ``question`` the critique
    request for the wrong path, ``critique`` its critique (steps before ``first_wrong`` right, that step
    wrong with the correct path's step as what it should read, the final answer wrong)."""
    fmt = get_critique_format(format_name)
    rows = {"question": [], "answer": [], "critique": []}
    for pair in pairs:
        steps, first = pair["wrong_steps"], pair["first_wrong"]
        judged = [StepJudgement(step, step, True) for step in steps[:first]]
        judged.append(StepJudgement(steps[first], pair["reference_step"] or steps[first], False))
        rows["question"].append(fmt.prompt(pair["prompt"], steps))
        rows["answer"].append(pair["answer"])
        rows["critique"].append(fmt.render(judged, final_correct=False))
    return Dataset.from_dict(rows)


def test_critique_pairs_sft_a_critic_for_a_step(actor, tmp_path):
    pairs = load_from_disk(str(saved(critique_pair_rows([search_tree()]), tmp_path / "pairs")))
    assert pairs["first_wrong"] == [2, 1, 0]  # "Answer: 15", "7 * 2 = 15", "3 + 4 = 8"
    rows = critique_sft_rows(pairs)
    verbose = get_critique_format("verbose")
    for critique, steps, first in zip(
        rows["critique"], pairs["wrong_steps"], pairs["first_wrong"], strict=True
    ):
        verdicts = verbose.parse(critique, len(steps))
        assert (
            verdicts.first_flagged == first
            and not verdicts.final
            and verdicts.num_malformed == len(steps) - first - 1
        )
    assert "It should read 7 * 2 = 14." in rows["critique"][1]
    critiques = saved(rows, tmp_path / "critiques")
    task = TaskConfig(task="file", train_path=str(critiques), solution_field="critique", num_train=0)
    out = tmp_path / "critic_sft"
    run_sft(
        ModelConfig(model_name_or_path=str(actor)), task, sft_args(out, save_strategy="steps", save_steps=1)
    )
    assert_sft_step(actor, out)


def test_revisions_sft_with_the_bad_prefix_masked(actor, tmp_path):
    revisions = load_from_disk(str(saved(revision_rows([search_tree()]), tmp_path / "revisions")))
    tokenizer = load_tokenizer(actor)
    template = partial(format_prompt, tokenizer)
    rows = revision_sft_rows(revisions, template)
    assert rows[2] == {"prompt": template(QUESTION) + "3 + 4 = 8\n",
                       "completion": DEFAULT_REVISION + "3 + 4 = 7\n7 * 2 = 14\nAnswer: 14"}  # fmt: skip
    model = load_actor(actor)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    trainer = SFTTrainer(model=model, args=sft_args(tmp_path / "rev", save_strategy="no"), train_dataset=rows,
                         processing_class=tokenizer)  # fmt: skip
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    for i, row in enumerate(rows):
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        labels, ids = batch["labels"][i], batch["input_ids"][i]
        assert ids[: len(prompt_ids)].tolist() == prompt_ids
        assert (labels[: len(prompt_ids)] == -100).all()  # template and bad prefix: no loss
        learned = labels[len(prompt_ids) :]
        learned = learned[learned != -100]
        assert tokenizer.decode(learned) == row["completion"] + tokenizer.eos_token
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(step_loss(trainer.state.log_history))
    assert "model.layers.0.self_attn.q_proj.weight" in changed(before, model.state_dict())


# ---------------------------------------------------------------------------------------------- DPO


def test_to_dpo_rows_puts_the_prefix_after_the_templated_question():
    pairs = step_preference_rows([search_tree()])
    rows = to_dpo_rows(pairs, template=lambda q: f"<{q}>")
    assert rows.column_names == ["prompt", "chosen", "rejected"]
    assert rows.to_list() == [
        {"prompt": f"<{QUESTION}>", "chosen": "3 + 4 = 7", "rejected": "3 + 4 = 8"},
        {"prompt": f"<{QUESTION}>3 + 4 = 7\n", "chosen": "7 * 2 = 14", "rejected": "7 * 2 = 15"},
        {"prompt": f"<{QUESTION}>3 + 4 = 7\n", "chosen": "7 * 2 = 14", "rejected": "7 + 2 = 9"},
        {"prompt": f"<{QUESTION}>3 + 4 = 7\n7 * 2 = 14\n", "chosen": "Answer: 14", "rejected": "Answer: 15"},
    ]
    assert to_dpo_rows(pairs, delimiter=" | ")[3]["prompt"] == f"{QUESTION}3 + 4 = 7 | 7 * 2 = 14 | "


@pytest.mark.parametrize(
    ("export", "num_pairs"),
    # rStar pairs leave out "7 + 2 = 9": nothing verified lies below it.
    [(step_preference_rows, 4), (rstar_pair_rows, 3)],
    ids=["step_prefs", "rstar"],
)
def test_pairs_train_dpo_for_a_step(export, num_pairs, actor, tmp_path):
    pairs = load_from_disk(str(saved(export([search_tree()]), tmp_path / "pairs")))
    assert len(pairs) == num_pairs
    tokenizer = load_tokenizer(actor)
    rows = to_dpo_rows(pairs, partial(format_prompt, tokenizer))
    model = load_actor(actor)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=4, bf16=False, max_length=256,
                     save_strategy="no", **ONE_STEP)  # fmt: skip
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    # The policy starts equal to the reference: every implicit reward is 0 and the loss is log 2.
    assert trainer.state.global_step == 1
    assert step_loss(trainer.state.log_history) == pytest.approx(math.log(2), abs=1e-4)
    assert "model.layers.0.self_attn.q_proj.weight" in changed(before, model.state_dict())
