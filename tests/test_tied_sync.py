"""A tied actor (one matrix for the input embeddings and the output head, as SmolLM2 and Qwen2.5) in the
rollout engines: after every weight sync the engine computes the trainer's log-probs, whatever the
sync leaves out; and the dtype check between the engine and the trainer (issue 14, items 2 and 6).

The engines start from a folder saved the way a tied model saves: without ``lm_head.weight``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from llmac.distributed import make_accelerator
from llmac.engines import EngineConfig, SamplingConfig, checkpoint_dtype, engine_compute_dtype
from llmac.engines.hf import HFEngine
from llmac.engines.tied import complete_tied_weights, tied_weight_names
from llmac.errors import ConfigError, LlmacError
from llmac.models import (
    LoraSettings,
    TinyModelConfig,
    build_tiny_model,
    load_actor,
    load_tokenizer,
    plain_state_dict,
    train_tiny_tokenizer,
)
from llmac.ppo.models import check_engine_precision, check_lora_on_tied_weights
from llmac.rl.forward import engine_logprob_gap, precision_mismatch
from llmac.rl.loop import sync_engine_weights

HEAD, EMBED = "lm_head.weight", "model.embed_tokens.weight"
SAMPLING = SamplingConfig(temperature=1.0, max_new_tokens=24, seed=5)
MAX_GAP = 1e-4  # issue 14: engine vs trainer, float32, after each sync


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory, arithmetic_rows):
    """A freshly built tiny tied actor, saved as transformers saves one: the head is not in the file."""
    tokenizer = train_tiny_tokenizer(list(arithmetic_rows["question"]) + list(arithmetic_rows["solution"]))
    model = build_tiny_model(tokenizer, TinyModelConfig(seed=3, tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    out = tmp_path_factory.mktemp("tied_actor")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    saved = load_file(out / "model.safetensors")
    assert EMBED in saved and HEAD not in saved
    return out


@pytest.fixture(scope="module")
def prompts(tied_dir, arithmetic_rows) -> list[str]:
    tokenizer = load_tokenizer(tied_dir)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in list(arithmetic_rows["question"])[:12]
    ]


@pytest.fixture(scope="module")
def vllm_tied(tied_dir, prompts):
    """A vLLM engine on the tied folder, and its gap to the folder's model before any sync."""
    pytest.importorskip("vllm")
    from llmac.engines.vllm import VLLMEngine

    engine = VLLMEngine(tied_dir, dtype="float32", max_model_len=256, seed=0)
    try:
        yield engine, gap(engine, load_actor(tied_dir), prompts)
    finally:
        engine.close()


@pytest.fixture(scope="module")
def accelerator():
    return make_accelerator(cpu=True)


def gap(engine, model: torch.nn.Module, prompts: list[str]) -> float:
    """Max |trainer - engine| log-prob of the tokens the engine samples (PPO's engine_logprob_gap_max)."""
    completions = [group[0] for group in engine.generate(prompts, SAMPLING)]
    trainer, sampled = [], []
    with torch.no_grad():
        for prompt, completion in zip(prompts, completions, strict=True):
            ids = engine.encode(prompt)
            logits = model(input_ids=torch.tensor([ids + completion.token_ids])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)[len(ids) - 1 : -1]
            trainer.append(logprobs.gather(1, torch.tensor(completion.token_ids)[:, None]).squeeze(1))
            sampled.append(torch.tensor(completion.logprobs))
    trainer_lp, engine_lp = torch.cat(trainer), torch.cat(sampled)
    assert len(engine_lp) >= 3 * len(prompts)
    return engine_logprob_gap(trainer_lp, engine_lp, torch.ones_like(engine_lp, dtype=torch.bool))[
        "engine_logprob_gap_max"
    ]


def update(model: torch.nn.Module, tokenizer, prompts: list[str], step: int, lr: float = 0.05) -> None:
    """Two AdamW steps of next-token loss on the prompts: every trainable weight moves, the tied one too."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batch = tokenizer(prompts[step::2], return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for _ in range(2):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def head_and_embedding(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    weights = plain_state_dict(model)
    return weights[HEAD], weights[EMBED]


# -- the helpers on their own ----------------------------------------------------------------------
def test_tied_weight_names_follow_the_config():
    from transformers import LlamaConfig, Qwen2Config

    assert tied_weight_names(Qwen2Config(tie_word_embeddings=True)) == {HEAD: EMBED}
    assert tied_weight_names(LlamaConfig(tie_word_embeddings=True)) == {HEAD: EMBED}  # SmolLM2's
    assert tied_weight_names(Qwen2Config(tie_word_embeddings=False)) == {}


def test_complete_tied_weights_sends_the_missing_half_and_refuses_an_untied_copy():
    embed, layer = torch.arange(6.0).reshape(3, 2), torch.ones(2)
    tied = {HEAD: EMBED}
    sent = list(complete_tied_weights(iter([(EMBED, embed), ("norm.weight", layer)]), tied))
    assert [name for name, _ in sent] == [EMBED, "norm.weight", HEAD]
    assert torch.equal(sent[-1][1], embed)
    assert [name for name, _ in complete_tied_weights({HEAD: embed}, tied)] == [HEAD, EMBED]
    both = {EMBED: embed, HEAD: embed.clone()}
    assert [name for name, _ in complete_tied_weights(both, tied)] == [EMBED, HEAD]
    assert [name for name, _ in complete_tied_weights({EMBED: embed}, {})] == [EMBED]  # untied model
    with pytest.raises(LlmacError, match=r"lm_head.weight differs from model.embed_tokens.weight .*0.5"):
        list(complete_tied_weights({EMBED: embed, HEAD: embed + 0.5}, tied))


def test_lora_on_a_tied_embedding_adapts_the_head_with_it(tied_dir):
    model = load_actor(tied_dir, "float32", LoraSettings(r=4, alpha=8, target_modules="q_proj,embed_tokens"))
    for name, parameter in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    head, embedding = head_and_embedding(model)
    base = load_actor(tied_dir).model.embed_tokens.weight
    assert not torch.allclose(embedding, base) and torch.equal(head, embedding)


def test_ppo_refuses_lora_on_a_tied_embedding_under_zero3_only(tied_dir):
    def accelerator(stage: int):
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage)))

    on_embedding = load_actor(
        tied_dir, "float32", LoraSettings(r=4, alpha=8, target_modules="q_proj,embed_tokens")
    )
    # peft's head adapter is the embedding's, transposed: a non-contiguous view DeepSpeed ZeRO-3 cannot shard.
    assert not all(p.is_contiguous() for n, p in on_embedding.named_parameters() if "lm_head.lora" in n)
    with pytest.raises(ConfigError, match="lora_target_modules=q_proj,embed_tokens .*ZeRO-3"):
        check_lora_on_tied_weights(on_embedding, "q_proj,embed_tokens", accelerator(3))
    check_lora_on_tied_weights(on_embedding, "q_proj,embed_tokens", accelerator(2))
    all_linear = load_actor(tied_dir, "float32", LoraSettings(r=4, alpha=8))
    check_lora_on_tied_weights(all_linear, "all-linear", accelerator(3))


# -- the engines after every sync ------------------------------------------------------------------
@pytest.mark.parametrize(
    "lora",
    [None, "all-linear", "q_proj,embed_tokens"],
    ids=["plain", "lora", "lora-on-the-tied-embedding"],
)
@pytest.mark.vllm
def test_vllm_runs_the_tied_trainers_weights_after_each_sync(vllm_tied, tied_dir, prompts, accelerator, lora):
    engine, from_folder = vllm_tied
    assert from_folder <= MAX_GAP  # started from the saved folder, which has no lm_head.weight
    settings = None if lora is None else LoraSettings(r=8, alpha=16, target_modules=lora)
    policy = load_actor(tied_dir, "float32", settings)
    tokenizer = load_tokenizer(tied_dir)
    sync_engine_weights(policy, engine, accelerator)  # back to the folder's weights (other tests moved them)
    assert gap(engine, policy, prompts) <= MAX_GAP
    base_head = head_and_embedding(policy)[0].clone()  # the weights are views of the parameters
    for step in range(2):
        update(policy, tokenizer, prompts, step)
        sync_engine_weights(policy, engine, accelerator)
        assert gap(engine, policy, prompts) <= MAX_GAP, step
    head, embedding = head_and_embedding(policy)
    assert torch.equal(head, embedding)
    # Plain training and LoRA on the embedding move the head; all-linear LoRA leaves it (peft skips it).
    assert torch.equal(head, base_head) == (lora == "all-linear")


@pytest.mark.vllm
def test_vllm_sync_without_the_head_is_completed_and_the_bug_it_prevents_is_caught(
    vllm_tied, tied_dir, prompts, monkeypatch
):
    engine, _ = vllm_tied
    policy = load_actor(tied_dir, "float32")
    update(policy, load_tokenizer(tied_dir), prompts, 0)
    # What a tied model's saved file, a stream of unique tensors or a head-less gather sends.
    headless = {name: tensor for name, tensor in plain_state_dict(policy).items() if name != HEAD}
    engine.load_weights(iter(headless.items()))
    assert gap(engine, policy, prompts) <= MAX_GAP
    # Negative control: without the completion the engine keeps its old head (measured 47-76 nats).
    engine.load_weights(plain_state_dict(load_actor(tied_dir, "float32")))
    monkeypatch.setattr(engine, "tied_weights", {})
    engine.load_weights(iter(headless.items()))
    stale = gap(engine, policy, prompts)
    assert stale > 1.0, stale


@pytest.mark.vllm
def test_vllm_refuses_a_sync_whose_head_is_not_its_embedding(vllm_tied, tied_dir, prompts):
    engine, _ = vllm_tied
    weights = plain_state_dict(load_actor(tied_dir, "float32"))
    untied = {**weights, HEAD: weights[HEAD] + 0.01}
    with pytest.raises(LlmacError, match="tie_word_embeddings"):
        engine.load_weights(untied)
    engine.load_weights(weights)  # a refused sync leaves the engine usable
    assert gap(engine, load_actor(tied_dir, "float32"), prompts) <= MAX_GAP


def test_hf_engine_takes_a_headless_sync_of_a_tied_model(tied_dir, prompts):
    engine = HFEngine(tied_dir, dtype="float32")
    policy = load_actor(tied_dir, "float32")
    update(policy, engine.tokenizer, prompts, 1)
    engine.load_weights({name: t for name, t in plain_state_dict(policy).items() if name != HEAD})
    assert engine.model.lm_head.weight is engine.model.model.embed_tokens.weight
    assert torch.equal(engine.model.lm_head.weight, policy.lm_head.weight)
    assert gap(engine, policy, prompts) <= MAX_GAP
    with pytest.raises(LlmacError, match="tie_word_embeddings"):
        weights = plain_state_dict(policy)
        engine.load_weights({**weights, HEAD: weights[HEAD] * 2})


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.ci_may_skip
@pytest.mark.parametrize("lora", [None, "all-linear"], ids=["plain", "lora"])
def test_smollm2_in_vllm_runs_the_trainers_weights_after_each_sync(smollm2_dir, accelerator, lora):
    """The same check on the real tied model (49k-token vocabulary, 30 layers): two updates, two syncs."""
    from llmac.engines.vllm import VLLMEngine

    tokenizer = load_tokenizer(smollm2_dir)
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": f"What is {a} + {b}?"}], tokenize=False,
                                      add_generation_prompt=True)
        for a, b in [(12, 30), (7, 45), (81, 9), (23, 64)]
    ]  # fmt: skip
    settings = None if lora is None else LoraSettings(r=8, alpha=16, target_modules=lora)
    policy = load_actor(smollm2_dir, "float32", settings)
    engine = VLLMEngine(smollm2_dir, dtype="float32", max_model_len=256, seed=0, kv_cache_gib=1)
    try:
        assert gap(engine, policy, prompts) <= MAX_GAP
        for step in range(2):
            update(policy, tokenizer, prompts, step, lr=1e-3)
            sync_engine_weights(policy, engine, accelerator)
            assert gap(engine, policy, prompts) <= MAX_GAP, step
    finally:
        engine.close()


# -- dtypes (item 6) -------------------------------------------------------------------------------
def test_precision_mismatch_names_both_dtypes_and_the_gap_to_expect():
    assert precision_mismatch(torch.float32, torch.float32) is None
    line = precision_mismatch(torch.float32, torch.bfloat16)
    assert "\n" not in line
    assert "engine computes in bfloat16 and the trainer in float32" in line and "6e-03" in line
    assert "1e-01" in line  # the measured max
    assert "7e-04" in precision_mismatch(torch.float16, torch.float32)


def test_engine_dtype_resolution(tied_dir):
    assert checkpoint_dtype(tied_dir) == torch.float32
    assert engine_compute_dtype(EngineConfig(engine="hf"), tied_dir) == torch.float32
    assert HFEngine(tied_dir).dtype == torch.float32  # hf's 'auto' is the checkpoint's
    assert (
        engine_compute_dtype(EngineConfig(engine="hf", engine_dtype="bfloat16"), tied_dir) == torch.bfloat16
    )
    # vLLM's 'auto' downcasts a float32 checkpoint
    assert engine_compute_dtype(EngineConfig(engine="vllm"), tied_dir) == torch.bfloat16
    assert (
        engine_compute_dtype(EngineConfig(engine="vllm", engine_dtype="float32"), tied_dir) == torch.float32
    )


@pytest.mark.vllm
def test_vllm_auto_dtype_is_what_vllm_resolves(tied_dir):
    import vllm.config

    assert vllm.config.ModelConfig(model=str(tied_dir), dtype="auto").dtype == engine_compute_dtype(
        EngineConfig(engine="vllm"), tied_dir
    )


def test_ppo_refuses_engine_logprobs_in_another_dtype_and_warns_otherwise(tied_dir, caplog):
    auto = EngineConfig(engine="vllm")
    with pytest.raises(ConfigError) as refused:
        check_engine_precision(torch.float32, auto, tied_dir, "engine")
    message = str(refused.value)
    assert "bfloat16" in message and "float32" in message and "old_logprobs: trainer" in message
    assert "\n" not in message
    with caplog.at_level(logging.WARNING, logger="llmac.ppo.models"):
        check_engine_precision(torch.float32, auto, tied_dir, "trainer")
    (record,) = caplog.records
    assert "engine computes in bfloat16 and the trainer in float32" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmac.ppo.models"):
        check_engine_precision(
            torch.float32, EngineConfig(engine="vllm", engine_dtype="float32"), tied_dir, "engine"
        )
        check_engine_precision(torch.bfloat16, auto, tied_dir, "engine")  # vLLM's auto matches a bf16 trainer
    assert not caplog.records
