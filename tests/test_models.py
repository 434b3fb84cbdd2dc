"""The tiny-model factory and actor loading: character tokens, untied embeddings, LoRA, safetensors."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmac.models import (
    LoraSettings,
    TinyModelConfig,
    build_tiny_model,
    load_actor,
    plain_state_dict,
    plain_weight_units,
    save_tiny_actor,
    train_tiny_tokenizer,
)

TEXTS = ["38 - 57 = -19\n-19 + 10 = -9\nAnswer: -9", "5 + 9 = 14\n14 + 7 = 21\nAnswer: 21"]


def test_tiny_tokenizer_is_character_level_and_round_trips():
    tokenizer = train_tiny_tokenizer(TEXTS)
    text = "14 + 7 = 21\nAnswer: 21"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == len(set("".join(TEXTS))) + 4  # the alphabet + pad, eos, user, assistant
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "5 + 9 ="}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>5 + 9 =\n<|assistant|>"


def test_tiny_model_has_untied_embeddings_and_calibrated_size():
    model = build_tiny_model(train_tiny_tokenizer(TEXTS), TinyModelConfig())
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not model.config.tie_word_embeddings
    non_embedding = sum(
        p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n
    )
    assert 0.5e6 < non_embedding < 0.55e6  # CALIBRATION.md: ~0.53M parameters


def test_saved_tiny_actor_reloads_with_plain_transformers(tmp_path):
    path = save_tiny_actor(TEXTS, tmp_path / "actor", TinyModelConfig(seed=3))
    assert (path / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    again = build_tiny_model(train_tiny_tokenizer(TEXTS), TinyModelConfig(seed=3))
    batch = tokenizer(["5 + 9 = 14"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, again(**batch).logits)


def test_load_actor_with_lora_trains_only_adapters(tmp_path):
    path = save_tiny_actor(TEXTS, tmp_path / "actor")
    model = load_actor(path, lora=LoraSettings(r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = load_actor(path)
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    with torch.no_grad():  # LoRA B starts at zero: the wrapped model computes the same function
        assert torch.allclose(model(**batch).logits, base(**batch).logits, atol=1e-6)


def test_plain_state_dict_merges_lora_out_of_place_like_peft_merge(tmp_path):
    path = save_tiny_actor(TEXTS, tmp_path / "actor")
    model = load_actor(path, lora=LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero adapters, so the merge has something to add
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = plain_state_dict(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # out of place
    unmerged = load_actor(path).state_dict()
    assert set(plain) == set(unmerged) and any(not torch.allclose(plain[k], unmerged[k]) for k in plain)
    merged = model.merge_and_unload().state_dict()  # peft's own merge, in place
    assert set(merged) == set(plain) and all(torch.allclose(plain[k], merged[k], atol=1e-6) for k in merged)


def test_weight_units_read_each_module_once_and_cover_the_state_dict(tmp_path):
    model = load_actor(save_tiny_actor(TEXTS, tmp_path / "actor"))
    units = list(plain_weight_units(model))
    names = [name for _, read in units for name in read()]
    assert len(names) == len(set(names)) and set(names) == set(model.state_dict())
    assert len(units) > 5  # layer by layer, not the whole model at once
    assert all(read() for _, read in units)
