"""`llmac generate` and `llmac eval` end to end on the tiny actor (HF engine: no vLLM start-up)."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from llmac.cli import main
from llmac.rewards import default_verifier, math_rewards
from llmac.steps import split_steps


def common_args(model_dir) -> list[str]:
    return [
        "--model_name_or_path", str(model_dir), "--engine", "hf", "--engine_dtype", "float32",
        "--task", "arithmetic", "--num_train", "200", "--num_eval", "6",
        "--num_samples", "3", "--max_new_tokens", "64", "--seed", "7",
    ]  # fmt: skip


def test_generate_writes_verified_rollouts(tiny_actor_dir, tmp_path):
    out = tmp_path / "rollouts"
    main(["generate", *common_args(tiny_actor_dir), "--output_dir", str(out)])
    rollouts = load_from_disk(str(out))
    assert len(rollouts) == 6 * 3
    assert sorted(set(rollouts["prompt_index"])) == list(range(6))
    for row in rollouts:
        assert "".join(row["steps"]) == row["completion"]
        assert row["steps"] == split_steps(row["completion"])
        assert len(row["step_ends"]) == len(row["steps"])
        assert len(row["token_ids"]) == len(row["logprobs"])
        assert all(lp <= 0 for lp in row["logprobs"])
        assert row["step_ends"] == sorted(row["step_ends"]) and row["step_ends"][-1] < len(row["token_ids"])
    # rewards are the verifier's verdicts on the stored text
    assert rollouts["reward"] == math_rewards(list(rollouts["completion"]), list(rollouts["answer"]))


def test_eval_metrics_match_its_rollouts(tiny_actor_dir, tmp_path):
    main(["eval", *common_args(tiny_actor_dir), "--output_dir", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rollouts = load_from_disk(str(tmp_path / "rollouts"))
    assert metrics["num_prompts"] == 6 and metrics["samples_per_prompt"] == 3
    assert metrics["pass_at_1"] == pytest.approx(sum(rollouts["reward"]) / len(rollouts))
    assert metrics["pass_at_1"] <= metrics["pass_at_k"]


def test_bad_gold_answers_score_zero_and_are_counted(tiny_actor_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    rows = [{"q": "12 + 5 =", "a": "17"}, {"q": "3 - 4 =", "a": "\\frac{"}]  # the second gold is unparsable
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    before = default_verifier().stats.unparsable_gold
    args = common_args(tiny_actor_dir)
    args[args.index("arithmetic")] = "file"
    out = tmp_path / "rollouts"
    main(["generate", *args, "--split", "eval", "--eval_path", str(data), "--question_field", "q",
          "--answer_field", "a", "--output_dir", str(out)])  # fmt: skip
    rollouts = load_from_disk(str(out))
    assert rollouts.filter(lambda r: r["prompt_index"] == 1)["reward"] == [0.0] * 3
    assert default_verifier().stats.unparsable_gold - before == 3


def test_unknown_command_exits_with_one_line_naming_the_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train-the-world"])
    assert exc.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown command 'train-the-world'" in line and "generate" in line


def test_sft_without_a_recipe_trains_in_float32_on_cpu(tmp_path, caplog):
    # TRL's SFTConfig turns bf16 on by default, which fails without a GPU; llmac picks float32 and says so.
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU default applies only without an accelerator")
    out = tmp_path / "sft"
    with caplog.at_level("INFO", logger="llmac"):
        main(["sft", "--task", "arithmetic", "--num_train", "64", "--max_steps", "1",
              "--per_device_train_batch_size", "8", "--report_to", "none", "--output_dir", str(out)])  # fmt: skip
    assert (out / "config.json").is_file() and any(out.glob("*.safetensors"))
    assert "training in float32" in caplog.text


def test_the_demo_summarises_reward_notices_once_per_stage(caplog, monkeypatch):
    import logging

    from llmac.demo import RewardNotices
    from llmac.rewards import math_rewards

    monkeypatch.delenv("LLMAC_VERBOSE", raising=False)
    level = logging.getLogger("llmac.rewards").level
    notices = RewardNotices()
    try:
        with caplog.at_level(logging.INFO):
            # one without an answer, one wrong, one right: only the first is a notice
            assert math_rewards(["no answer here", "Answer: 5", "Answer: 5"], ["5", "6", "5"]) == [
                0.0,
                0.0,
                1.0,
            ]
            notices.report("eval")
            notices.report("idle")  # nothing new: no line
    finally:
        notices.close()
    summaries = [r.getMessage() for r in caplog.records if "unread" in r.getMessage()]
    assert summaries == ["rewards, eval stage: 1 of 3 answers scored 0.0 unread (1 no_answer)"]
    per_batch = [
        r for r in caplog.records if r.name.startswith("llmac.rewards") and r.levelno == logging.WARNING
    ]
    assert per_batch == []
    assert logging.getLogger("llmac.rewards").level == level  # restored
