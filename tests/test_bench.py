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
    import pipelines as bench

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
    import pipelines as bench

    args = bench.parse_args(["--quick", "--lr_scheduler_type", "cosine", "--ppo_epochs=2"])
    assert args.overrides == ["--lr_scheduler_type", "cosine", "--ppo_epochs=2"]
    assert args.arms == ["ppo", "grpo", "dapo", "mcts_ei", "trl_grpo"] and args.seeds == [0]
    spec = {"recipe": str(REPO / "recipes/ppo/tiny_mixed.yaml"), "actor": "x", "dir": "/tmp/x", "seed": 1,
            "settings": bench.QUICK_SETTINGS + args.overrides, "iterations": 2, "eval_every": 2}  # fmt: skip
    _, task, _, ppo = bench.load_recipe(bench.arm_argv(spec))
    assert (ppo.lr_scheduler_type, ppo.ppo_epochs, ppo.prompts_per_iteration, ppo.seed) == (
        "cosine",
        2,
        16,
        1,
    )
    assert (task.task, ppo.output_dir) == ("arithmetic_mixed", "/tmp/x/run")
    for refused in (["--seed", "3"], ["--value_model", "c"], ["--arms", "ppo,mcts"]):
        with pytest.raises(SystemExit):
            bench.parse_args(refused)


def test_leaderboard_means_and_targets_by_hand():
    import pipelines as bench

    runs = [{"curve": [{"completions": 0, "eval_accuracy": 0.3}, {"completions": 512, "eval_accuracy": 0.5}]},
            {"curve": [{"completions": 0, "eval_accuracy": 0.4}, {"completions": 512, "eval_accuracy": 0.6},
                       {"completions": 1024, "eval_accuracy": 0.9}]}]  # fmt: skip
    curve = bench.mean_curve(runs, "eval_accuracy")
    assert [c for c, _ in curve] == [0, 512, 1024]
    assert [a for _, a in curve] == pytest.approx([0.35, 0.55, 0.9])
    assert bench.mean_curve(runs, "eval_sampled_accuracy") == []
    # DAPO's seeds stop at slightly different counts: averaged evaluation by evaluation, at the mean count
    dapo = [{"curve": [{"completions": 0, "eval_accuracy": 0.2}, {"completions": 7920, "eval_accuracy": 0.5},
                       {"completions": 15700, "eval_accuracy": 0.52}]},
            {"curve": [{"completions": 0, "eval_accuracy": 0.2}, {"completions": 7968, "eval_accuracy": 0.6},
                       {"completions": 16228, "eval_accuracy": 0.56}]}]  # fmt: skip
    curve = bench.mean_curve(dapo, "eval_accuracy")
    assert [c for c, _ in curve] == [0, 7944, 15964]
    assert [a for _, a in curve] == pytest.approx([0.2, 0.55, 0.54])
    curves = {"base": [(0, 0.30)], "ppo": [(0, 0.30), (512, 0.45), (1024, 0.52)],
              "grpo": [(0, 0.30), (512, 0.40), (1024, 0.45)], "trl_grpo": [(0, 0.30), (512, 0.46), (1024, 0.50)]}  # fmt: skip
    targets = bench.verdicts(curves)
    assert targets["ppo_gain_points"] == pytest.approx(22.0)
    assert [c for c, _ in targets["ppo_minus_trl_points"]] == [0, 512, 1024]
    assert [d for _, d in targets["ppo_minus_trl_points"]] == pytest.approx([0.0, -1.0, 2.0])
    assert targets["ppo_at_least_trl_everywhere"] is False  # one point below TRL is enough to miss it
    assert targets["ppo_completions_to_grpo_final"] == 512  # 0.45 >= GRPO's final 0.45
    assert bench.completions_to_reach(curves["grpo"], 0.9) is None


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


@pytest.mark.parametrize("bench", ["rollout_throughput", "mc_labelling", "critic_scoring"])
def test_model_flag_measures_a_real_model_into_its_own_results_file(bench, tmp_path, monkeypatch, capsys):
    import importlib

    from helpers.bench_actor import arithmetic_task, bench_name

    from llmac.data import ArithmeticTaskConfig

    module = importlib.import_module(bench)
    model = tmp_path / "SmolLM2-135M-Instruct"
    model.mkdir()
    (model / "config.json").write_text("{}")

    def parsed(*argv: str):
        monkeypatch.setattr(sys, "argv", [bench, *argv])
        args = module.parse_args()
        return args, BenchRecord(bench_name(bench, args), args).path

    args, path = parsed("--quick", "--model", str(model))
    assert args.model == model and path == REPO / f"bench/results/{bench}-smollm2-quick.json"
    assert arithmetic_task(args).instruction  # a real model gets the English question
    args, path = parsed("--model", str(model), "--results", str(tmp_path / "r.json"))
    assert path == tmp_path / "r.json"
    args, path = parsed("--quick")  # the tiny actor's run is as before: bare expressions, its own file
    assert args.model is None and path == REPO / f"bench/results/{bench}-quick.json"
    assert arithmetic_task(args) == ArithmeticTaskConfig()
    with pytest.raises(SystemExit):
        parsed("--model", str(tmp_path))  # no config.json: refused before anything runs
    assert "no config.json" in capsys.readouterr().err


def test_gsm8k_critic_reads_four_labelled_solutions_a_question_and_names_a_bad_row(tmp_path, gsm8k_dir):
    import gsm8k_critic

    from llmac.data.loading import DataError

    questions = gsm8k_critic.read_solutions(gsm8k_dir / "model_solutions.jsonl")
    assert len(questions) == 660 and all(len(q["solutions"]) == 4 for q in questions)
    steps, correct, key = questions[0]["solutions"][0]  # Janet's ducks, 6B fine-tuned: 26, wrong (gold 18)
    assert steps[-1] == "A: 26" and key == "26" and correct is False and len(steps) == 3

    row = json.loads((gsm8k_dir / "model_solutions.jsonl").read_text().splitlines()[0])
    row["175b_verification"]["is_correct"] = "yes"
    bad = tmp_path / "solutions.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r"solutions\.jsonl:1: field '175b_verification'"):
        gsm8k_critic.read_solutions(bad)
