"""Exported folders reloaded the way users load them: HF greedy against vLLM greedy, critic scores."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmac import parity
from llmac.data.loading import format_prompt
from llmac.engines import EngineConfig
from llmac.hub import export_model
from llmac.models import load_tokenizer


@pytest.fixture(scope="module")
def exported_actor(tiny_actor_dir, tmp_path_factory):
    return export_model(tiny_actor_dir, tmp_path_factory.mktemp("export") / "actor")


@pytest.fixture(scope="module")
def prompts(tiny_actor_dir, arithmetic_rows):
    tokenizer = load_tokenizer(tiny_actor_dir)
    return [format_prompt(tokenizer, q) for q in arithmetic_rows["question"][:6]]


def test_until_eos_cuts_at_the_first_end_token():
    assert parity._until_eos([5, 6, 2, 7, 2], {2}) == [5, 6]
    assert parity._until_eos([5, 6], {2}) == [5, 6]
    assert parity._until_eos([2, 5], {2, 9}) == []


def test_hf_and_vllm_write_the_same_greedy_tokens(exported_actor, prompts):
    pytest.importorskip("vllm")
    result = parity.greedy_parity(
        exported_actor,
        prompts,
        max_new_tokens=40,
        engine_config=EngineConfig(engine="vllm", engine_dtype="float32"),
    )
    assert result.engine == "VLLMEngine"
    assert (result.num_prompts, result.identical, result.first_divergence) == (6, 6, None)
    # Not trivially empty: the warm actor writes a worked solution of several tokens.
    tokenizer = load_tokenizer(exported_actor)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[:1]]
    assert len(parity.hf_greedy(exported_actor, ids, 40)[0]) > 5


def test_a_differing_completion_is_counted_with_its_first_token(exported_actor, prompts, monkeypatch):
    real = parity.hf_greedy

    def one_token_off(folder, prompt_ids, max_new_tokens):
        out = real(folder, prompt_ids, max_new_tokens)
        out[1] = out[1][:3] + [out[1][3] + 1] + out[1][4:]  # the second prompt differs at token 3
        return out

    monkeypatch.setattr(parity, "hf_greedy", one_token_off)
    result = parity.greedy_parity(exported_actor, prompts[:3], 40, EngineConfig(engine="hf"))
    assert (result.identical, result.first_divergence) == (2, 3)
    assert "2/3" in result.summary() and "token 3" in result.summary()


def test_critic_export_gap_is_zero_for_a_faithful_export_and_sees_a_changed_head(tiny_actor_dir, tmp_path):
    from llmac.critic.model import init_critic

    trained = tmp_path / "critic"
    critic = init_critic(tiny_actor_dir, "\n")
    torch.nn.init.normal_(critic.score.weight, std=0.5)
    critic.save_pretrained(trained)
    load_tokenizer(tiny_actor_dir).save_pretrained(trained)
    exported = export_model(trained, tmp_path / "exported")
    texts = ["12 + 5 =\n12 + 5 = 17\nAnswer: 17", "3 - 4 =\n3 - 4 = -1\nAnswer: -1"]
    assert parity.critic_export_gap(trained, exported, texts) < 1e-6

    (weights_file,) = exported.glob("*.safetensors")
    weights = load_file(weights_file)
    bias = [name for name in weights if name.startswith("score.") and name.endswith("bias")]
    if bias:
        weights[bias[0]] = weights[bias[0]] + 0.25
    else:  # a head without bias: scale the weight instead and expect a non-zero gap
        weights["score.weight"] = weights["score.weight"] * 2
    save_file(weights, weights_file, metadata={"format": "pt"})
    gap = parity.critic_export_gap(trained, exported, texts)
    assert gap == pytest.approx(0.25, abs=1e-5) if bias else gap > 1e-3
