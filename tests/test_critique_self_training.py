"""Critique-in-the-loop self-training: the keep rule on hand-made turns, and one iteration on the tiny
actor (critiques by the exact oracle) that trains it on what the rule kept."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from datasets import Dataset, load_from_disk

from llmac.critique.format import get_critique_format
from llmac.critique.oracle import answer_is_correct, judge_solution
from llmac.critique.refine import TURN_COLUMNS
from llmac.critique.self_training import (
    KEPT_COLUMNS,
    SelfTrainConfig,
    iteration_rows,
    keep_rule,
    kept_solutions,
    run_self_training,
)
from llmac.engines import Completion
from llmac.errors import ConfigError, OutputError

Q1, Q2 = "3 + 4 - 2 =", "9 - 5 ="


def _turn(problem, sample, round_, question, answer, solution, correct, refined_solution, refined_correct):
    row = dict.fromkeys(TURN_COLUMNS)
    row.update(problem_index=problem, sample_index=sample, round=round_, question=question, answer=answer,
               solution=solution, critique="", step_verdicts=[], first_flagged=-1, num_malformed=0,
               refined=solution != refined_solution, refined_solution=refined_solution, correct=correct,
               refined_correct=refined_correct)  # fmt: skip
    return row


def test_keep_rule_by_hand():
    assert [keep_rule(c, r) for c, r in [(True, True), (True, False), (False, True), (False, False)]] == [
        "original",
        "original",  # a right solution the refinement broke is still kept, as it was
        "refined",
        None,
    ]
    right, fixed = "3 + 4 = 7\n7 - 2 = 5\nAnswer: 5", "9 - 5 = 4\nAnswer: 4"
    turns = [
        _turn(0, 0, 0, Q1, "5", right, True, right, True),  # correct: kept as it is
        _turn(0, 1, 0, Q1, "5", "Answer: 6", False, right, True),  # wrong, refined right: the refinement
        _turn(0, 2, 0, Q1, "5", "Answer: 6", False, "Answer: 7", False),  # both wrong: dropped
        _turn(0, 3, 0, Q1, "5", right, True, "Answer: 6", False),  # right, refinement broke it: original
        # two rounds: the first refinement is wrong, the second right; the last turn's refinement is kept
        _turn(1, 0, 0, Q2, "4", "9 - 5 = 3\nAnswer: 3", False, "9 - 5 = 5\nAnswer: 5", False),
        _turn(1, 1, 0, Q2, "4", "Answer: 2", False, "Answer: 1", False),
        _turn(1, 0, 1, Q2, "4", "9 - 5 = 5\nAnswer: 5", False, fixed, True),
    ]
    kept = kept_solutions(Dataset.from_list(turns), deduplicate=False)
    assert kept.column_names == list(KEPT_COLUMNS)
    assert kept.to_list() == [
        {"question": Q1, "answer": "5", "solution": right, "source": "original", "problem_index": 0, "sample_index": 0},
        {"question": Q1, "answer": "5", "solution": right, "source": "refined", "problem_index": 0, "sample_index": 1},
        {"question": Q1, "answer": "5", "solution": right, "source": "original", "problem_index": 0, "sample_index": 3},
        {"question": Q2, "answer": "4", "solution": fixed, "source": "refined", "problem_index": 1, "sample_index": 0},
    ]  # fmt: skip
    deduplicated = kept_solutions(Dataset.from_list(turns))
    assert [(r["problem_index"], r["sample_index"]) for r in deduplicated] == [(0, 0), (1, 0)]
    with pytest.raises(ValueError, match="no correctness"):
        kept_solutions(Dataset.from_list([{**turns[0], "correct": None}]))


def test_iterations_take_fresh_problems_and_wrap_around():
    rows = Dataset.from_dict({"question": list("abcde"), "answer": list("12345")})
    assert [iteration_rows(rows, k, 2)["question"] for k in (1, 2, 3)] == [["a", "b"], ["c", "d"], ["e", "a"]]
    assert iteration_rows(rows, 1, 9)["question"] == list("abcde")
    with pytest.raises(ConfigError, match="give both --actor and --critic"):
        SelfTrainConfig(actor="a")


class PlainTokenizer:
    chat_template = None


class OracleCritic:
    """Compact critiques written by the exact arithmetic oracle (a perfect critique model)."""

    delimiter = "\n"
    tokenizer = PlainTokenizer()

    def generate(self, prompts, sampling):
        out = []
        for prompt in prompts:
            question, _, solution = prompt.rstrip("\n").partition("\n")
            judged = judge_solution(question, solution)
            text = get_critique_format("compact").render(judged.judgements(), judged.answer_correct)
            out.append([Completion([1], [0.0], "stop", text=text)])
        return out


def _mean_logprob(model_dir, questions, solutions) -> float:
    """Mean per-token log-prob of each solution given its question, over the solutions."""
    from llmac.data.loading import format_prompt
    from llmac.models import load_actor, load_tokenizer

    model, tokenizer = load_actor(model_dir, "float32").eval(), load_tokenizer(model_dir)
    total = 0.0
    for question, solution in zip(questions, solutions, strict=True):
        prompt = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
        answer = tokenizer(solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logprobs = model(ids).logits[0, :-1].log_softmax(-1)
        picked = logprobs[len(prompt) - 1 :].gather(1, ids[0, len(prompt) :, None])
        total += picked.mean().item()
    return total / len(questions)


def test_one_iteration_trains_the_actor_on_what_the_keep_rule_kept(tiny_actor_dir, tmp_path, caplog):
    from trl import SFTConfig

    from llmac.data.tasks import TaskConfig
    from llmac.engines import EngineConfig, build_engine

    config = SelfTrainConfig(actor=str(tiny_actor_dir), critic="oracle", num_iterations=1, num_problems=32,
                             samples_per_problem=4, solution_max_new_tokens=40, refine_max_new_tokens=40)  # fmt: skip
    task = TaskConfig(task="arithmetic", num_train=64, num_eval=16, min_terms=3, max_terms=3, max_digits=1)
    engine_config = EngineConfig(engine="hf", engine_dtype="float32")
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=6, per_device_train_batch_size=8,
                     learning_rate=2e-3, lr_scheduler_type="constant", report_to="none", bf16=False,
                     save_strategy="no", logging_steps=1, disable_tqdm=True, max_length=128, seed=0)  # fmt: skip
    with build_engine(tiny_actor_dir, engine_config) as actor_engine:
        records = run_self_training(
            config, task, engine_config, args, actor_engine=actor_engine, critic_engine=OracleCritic()
        )
        start, after = records
        run = tmp_path / "run"
        turns = load_from_disk(str(run / "iteration-1" / "turns"))
        kept = load_from_disk(str(run / "iteration-1" / "kept"))

        # every sample critiqued once (one round); the rejected ones refined; all of it charged
        assert turns.column_names == list(TURN_COLUMNS) and len(turns) == after["solutions"] == 128
        assert (
            after["refinements"] == sum(turns["refined"])
            and after["completions"] == 2 * 128 + after["refinements"]
        )
        # the oracle critic accepts exactly the solutions without a wrong step; the others were refined
        judged = [judge_solution(r["question"], r["solution"], r["answer"]) for r in turns]
        assert list(turns["refined"]) == [j.first_error != -1 or not j.answer_correct for j in judged]
        # the keep rule, recomputed from the texts with the oracle's answer check (an independent path)
        expected = []
        for row in turns:
            if answer_is_correct(row["solution"], row["answer"]):
                expected.append((row["question"], row["solution"], "original"))
            elif answer_is_correct(row["refined_solution"], row["answer"]):
                expected.append((row["question"], row["refined_solution"], "refined"))
        expected = list(dict.fromkeys((q, s) for q, s, _ in expected))  # deduplicated, in order
        assert list(zip(kept["question"], kept["solution"], strict=True)) == expected
        assert after["kept"] == len(kept) > 0 and after["kept_original"] + after["kept_refined"] == len(kept)

        # the SFT measurably moved the actor towards the kept solutions; the engine serves the new actor
        before_lp = _mean_logprob(tiny_actor_dir, kept["question"], kept["solution"])
        after_lp = _mean_logprob(run / after["actor"], kept["question"], kept["solution"])
        assert after_lp > before_lp + 0.05, (before_lp, after_lp)
        assert start["iteration"] == 0 and math.isfinite(after["eval_accuracy"])
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert lines == records

        # a rerun reuses the finished iteration (no new SFT) and gives the same records
        stamp = (run / after["actor"] / "model.safetensors").stat().st_mtime_ns
        from llmac.critique.self_training import load_actor_weights

        load_actor_weights(actor_engine, tiny_actor_dir)
        with caplog.at_level("INFO", logger="llmac.critique.self_training"):
            again = run_self_training(
                config, task, engine_config, args, actor_engine=actor_engine, critic_engine=OracleCritic()
            )
        assert again == records and "iteration 1 found finished" in caplog.text
        assert (run / after["actor"] / "model.safetensors").stat().st_mtime_ns == stamp
        # ...but never one made from other settings
        with pytest.raises(OutputError, match="changed: self_train"):
            run_self_training(replace(config, samples_per_problem=2), task, engine_config, args,
                              actor_engine=actor_engine, critic_engine=OracleCritic())  # fmt: skip
