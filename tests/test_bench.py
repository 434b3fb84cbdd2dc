"""The benches' own machinery: token batching, result files, cached artifacts, and the TRL arm's
completion count and learning-rate schedule (the figures the README quotes rest on these)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))  # the benches import their helpers as `helpers.*`

from helpers.cache import CacheError, cached_model  # noqa: E402
from helpers.results import BenchRecord, parse_summary_line, summary_line  # noqa: E402
from helpers.token_batches import padded_tokens, token_batches  # noqa: E402


def test_token_batches_cap_padded_tokens_and_group_similar_lengths():
    lengths = [5, 3, 10, 4]
    # Shortest first: 3, 4 fit (2 x 4 = 8); adding 5 would make 3 x 5 = 15 > 12; 5 and 10 make 20 > 12.
    batches = token_batches(lengths, max_tokens=12)
    assert batches == [[1, 3], [0], [2]]
    assert padded_tokens(lengths, batches) == 2 * 4 + 5 + 10
    assert token_batches([20, 2], max_tokens=12) == [[1], [0]]  # too long for any batch: alone
    assert token_batches([3] * 8, max_tokens=12) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_summary_line_round_trips_and_record_names_the_command(tmp_path, monkeypatch):
    figures = {"ratio": 2.3456, "hf_batch": 512, "tiny": 1.19e-7}
    line = summary_line(figures)
    assert line == "ratio=2.346 hf_batch=512 tiny=1.19e-07"
    assert {k: float(v) for k, v in parse_summary_line(line).items()} == pytest.approx(figures, rel=1e-3)

    monkeypatch.setattr(sys, "argv", [str(REPO / "bench/critic_scoring.py"), "--quick", "--threads", "1"])
    import argparse

    args = argparse.Namespace(quick=True, threads=1, results=str(tmp_path / "out.json"))
    path = BenchRecord("critic_scoring", args).save(figures, {"times": [1.0]})
    record = json.loads(path.read_text())
    assert record["command"].endswith("bench/critic_scoring.py --quick --threads 1")
    assert record["figures"] == figures and record["summary"] == line
    assert record["machine"]["nproc"] >= 1 and len(record["machine"]["load_at_start"]) == 3
    assert record["args"]["threads"] == 1 and record["code_version"]
    default = BenchRecord("critic_scoring", argparse.Namespace(quick=True)).path
    assert default == REPO / "bench/results/critic_scoring-quick.json"  # never a full run's file


def test_cached_model_is_reused_only_whole_and_never_replaces_foreign_files(tmp_path, tiny_actor_dir):
    builds = []

    def build(folder: Path) -> None:
        builds.append(folder)
        shutil.copytree(tiny_actor_dir, folder)

    target = tmp_path / "actor-abc"
    assert cached_model(target, "key-1", build) == (target, False)
    assert cached_model(target, "key-1", build) == (target, True)
    assert len(builds) == 1 and not list(tmp_path.glob(".*tmp"))  # built in a sibling, renamed

    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a damaged model is rebuilt, not reused
    assert cached_model(target, "key-1", build) == (target, False)
    assert cached_model(target, "key-2", build) == (target, False)  # other inputs: rebuilt
    assert len(builds) == 3

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(CacheError, match="not written by this bench"):
        cached_model(foreign, "key-1", build)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_an_arm_is_reused_only_from_the_same_inputs_with_a_complete_actor(tmp_path, tiny_actor_dir):
    import ppo_vs_grpo as bench

    from llmac.fingerprints import write_stage_stamp

    spec = {"arm": "ppo", "seed": 0, "actor_fingerprint": "a", "settings": [], "dir": str(tmp_path / "ppo")}
    shutil.copytree(tiny_actor_dir, tmp_path / "ppo/run/actor")
    (tmp_path / "ppo/result.json").write_text(json.dumps({"curve": [[0, 0.5]]}))
    assert bench.finished(spec) is None  # not stamped done
    write_stage_stamp(tmp_path / "ppo", bench.spec_key(spec))
    assert bench.finished(spec) == {"curve": [[0, 0.5]]}
    assert bench.finished({**spec, "actor_fingerprint": "b"}) is None  # another actor's content
    weights = tmp_path / "ppo/run/actor/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert bench.finished(spec) is None


def test_recipe_overrides_reach_every_arm_and_bench_fields_are_refused():
    import ppo_vs_grpo as bench

    args, overrides = bench.parse_args(["--quick", "--lr_scheduler_type", "cosine", "--ppo_epochs=2"])
    assert overrides == ["--lr_scheduler_type", "cosine", "--ppo_epochs=2"]
    for arm in bench.ARMS:
        spec = {"arm": arm, "recipe": str(REPO / "recipes/ppo/tiny_arithmetic.yaml"), "actor": "x",
                "settings": bench.QUICK_SETTINGS + overrides, "dir": "/tmp/x", "seed": 1,
                "iterations": 2, "eval_every": 2, "critic": None}  # fmt: skip
        ppo = bench.load_recipe(bench.arm_argv(spec))[3]
        assert (ppo.lr_scheduler_type, ppo.ppo_epochs, ppo.prompts_per_iteration) == ("cosine", 2, 16)
    with pytest.raises(SystemExit):
        bench.parse_args(["--seed", "3"])  # the bench seeds each arm itself (and --seeds is not --seed)


def test_trl_arm_counts_generated_completions_and_decays_the_rate(tmp_path, tiny_actor_dir, arithmetic_rows):
    """ppo_epochs=2: TRL reuses each generation round for 2 passes, so optimizer steps are twice the
    minibatches but completions are generated once per round; the rate follows llmac's cosine."""
    pytest.importorskip("trl")
    from helpers.trl_grpo import CountingReward, grpo_trainer, task_prompts
    from transformers import TrainerCallback

    from llmac.models import load_actor, load_tokenizer
    from llmac.ppo.config import PPOConfig
    from llmac.rewards.registry import get_reward_fn

    ppo = PPOConfig(output_dir=str(tmp_path), num_iterations=2, prompts_per_iteration=4, samples_per_prompt=2,
                    mini_batch_size=4, ppo_epochs=2, max_new_tokens=8, learning_rate=1e-3, warmup_steps=1,
                    lr_scheduler_type="cosine", old_logprobs="trainer")  # fmt: skip

    class Rates(TrainerCallback):
        seen: list[float] = []

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.seen.append(optimizer.param_groups[0]["lr"])

    tokenizer = load_tokenizer(tiny_actor_dir)
    rows = arithmetic_rows.select(range(16))
    texts, _, answers = task_prompts(tokenizer, rows, ppo.max_prompt_length)
    reward = CountingReward(get_reward_fn("math"))
    rates = Rates()
    trainer = grpo_trainer(
        load_actor(tiny_actor_dir, "float32"), tokenizer, texts, answers, ppo, reward, [rates]
    )
    trainer.train()

    # 2 rounds of 4 prompts x 2 samples; each round: 2 minibatches of 4, passed over twice.
    assert reward.completions == 16
    assert trainer.state.global_step == 8
    # Warm-up 1 step, then cosine over the 7 steps left: factor 0.5 (1 + cos(pi (k - 1) / 7)).
    expected = [1.0, 1.0, 0.950484, 0.811745, 0.611260, 0.388740, 0.188255, 0.049516]
    assert [r / 1e-3 for r in rates.seen] == pytest.approx(expected, abs=1e-5)
    assert math.isclose(expected[2], 0.5 * (1 + math.cos(math.pi / 7)), abs_tol=1e-6)
