"""``llmac import-gguf``: a GGUF file this test writes itself (a tiny Llama and byte-level BPE, the
way llama.cpp's converter lays them out) imports into a folder whose logits are the original model's;
tied embeddings stay tied; a failed check or a foreign folder leaves nothing behind. The real
SmolLM2-135M-Instruct GGUF (``make smollm2``) is the slow test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llmac import cli
from llmac.errors import InputNotFoundError, OutputError
from llmac.gguf_import import REPORT_FILE, ImportCheckError, import_gguf, load_gguf, ties_embeddings
from llmac.outputs import read_marker

gguf = pytest.importorskip("gguf")  # a dependency of llmac (pyproject.toml); CI fails this skip

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Natalia sold 48 clips in April and half as many in May, so 48 + 24 = 72 clips.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "def add(a, b):\n    return a + b\n",
    "Step 1: 17 + 25 = 42\nStep 2: 42 * 2 = 84\nThe answer is 84",
] * 20
TEXTS = ["The answer is 72.", "def add(a, b):\n    return a + b", "Paris, Rome and 17 + 25 = 42"]


def tiny_bpe():
    """A byte-level BPE tokenizer (GPT-2's splitting) with ChatML control tokens, ~300 tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def tiny_llama(vocab_size: int, tied: bool):
    """A 2-layer Llama with grouped-query attention; weights large enough that every one matters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            scale = 0.1 if "norm" in name else 0.3
            parameter.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn_like(parameter))
    return model


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of q/k projection rows (rotary halves interleaved), as its converter writes."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(path: Path, model, tokenizer, permute_qk: bool = True) -> Path:
    """``model`` and ``tokenizer`` as a float32 GGUF in llama.cpp's layout, written with gguf's own writer."""
    config = model.config
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(pair) for pair in json.loads(tokenizer.to_str())["model"]["merges"]]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    control, normal = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL
    writer.add_token_types([control if t in SPECIAL_TOKENS else normal for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_pad_token_id(vocab["<|im_end|>"])
    writer.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # a tied model has no output.weight: that is how a GGUF says "tied"
        array = tensor.detach().numpy().astype(np.float32)
        if permute_qk and name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, config.num_attention_heads)
        elif permute_qk and name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, config.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe()


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


def _reference_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.encode(text).ids for text in TEXTS]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_import_reproduces_the_original_model(tmp_path, bpe, tied):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = tiny_llama(bpe.get_vocab_size(), tied)
    path = write_gguf(tmp_path / "tiny.gguf", original, bpe)
    out = tmp_path / "imported"
    report = import_gguf(path, out)

    # The saved folder loads with plain transformers and computes the original model's logits.
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = _reference_ids(bpe)
    assert [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS] == ids
    for prompt in ids:
        assert torch.allclose(_logits(model, prompt), _logits(original, prompt), atol=1e-5, rtol=0)

    # Tied stays tied: one matrix in memory, no lm_head in the file, the flag in config.json.
    assert ties_embeddings(model) is tied and model.config.tie_word_embeddings is tied
    with safe_open(out / "model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert ("lm_head.weight" in names) is not tied
        assert all(weights.get_tensor(name).dtype == torch.float32 for name in names)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is tied and "quantization_config" not in config

    # Chat template, special tokens and generation config come along.
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("<|im_start|>", add_special_tokens=False)["input_ids"] == [
        bpe.token_to_id("<|im_start|>")
    ]
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == bpe.token_to_id("<|im_end|>")

    # The report and the marker: the figure of the check, a complete llmac folder.
    assert report == json.loads((out / REPORT_FILE).read_text())
    assert report["max_abs_logit_diff"] == 0.0 and report["tie_word_embeddings"] is tied
    assert report["parameters"] == sum(p.numel() for p in original.parameters())
    assert read_marker(out)["command"] == "import-gguf" and read_marker(out)["complete"]


def test_reference_comparison_catches_a_writer_without_the_qk_permutation(tmp_path, bpe):
    # Guards the test above: had transformers (or this writer) got the rotary layout wrong, the
    # imported logits would not be the original's.
    original = tiny_llama(bpe.get_vocab_size(), tied=True)
    path = write_gguf(tmp_path / "unpermuted.gguf", original, bpe, permute_qk=False)
    model, _ = load_gguf(path)
    prompt = _reference_ids(bpe)[2]
    assert (_logits(model, prompt) - _logits(original, prompt)).abs().max() > 1e-2


def test_a_failed_check_writes_nothing(tmp_path, bpe, monkeypatch):
    import llmac.gguf_import as gguf_import

    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama(bpe.get_vocab_size(), tied=True), bpe)
    real_load = gguf_import.load_gguf

    def load_then_drift(gguf_path):
        model, tokenizer = real_load(gguf_path)
        save = model.save_pretrained

        def save_then_change(folder, **kwargs):  # the saved copy differs from the model compared with it
            save(folder, **kwargs)
            with torch.no_grad():
                model.model.norm.weight.mul_(1.001)

        model.save_pretrained = save_then_change
        return model, tokenizer

    monkeypatch.setattr(gguf_import, "load_gguf", load_then_drift)
    with pytest.raises(ImportCheckError, match=r"differ .* by up to [0-9.e-]+ \(tolerance 0.0001\)"):
        import_gguf(path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]  # no folder, no staging leftover


def test_outputs_llmac_did_not_write_are_refused_before_loading(tmp_path, bpe, monkeypatch):
    import llmac.gguf_import as gguf_import

    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama(bpe.get_vocab_size(), tied=True), bpe)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    monkeypatch.setattr(gguf_import, "load_gguf", lambda p: pytest.fail("loaded before checking the output"))
    with pytest.raises(OutputError, match="llmac did not write"):
        import_gguf(path, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match="is inside"):
        import_gguf(path, path / "out")


def test_cli_imports_and_replaces_only_with_overwrite(tmp_path, bpe, capsys):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_llama(bpe.get_vocab_size(), tied=True), bpe)
    out = tmp_path / "imported"
    cli.main(["import-gguf", "--gguf", str(path), "--output_dir", str(out)])
    assert "max abs logit difference GGUF vs saved 0" in capsys.readouterr().out
    first = (out / REPORT_FILE).read_text()
    with pytest.raises(SystemExit):
        cli.main(["import-gguf", "--gguf", str(path), "--output_dir", str(out)])
    assert "pass --overwrite" in capsys.readouterr().err
    time.sleep(0.01)
    cli.main(["import-gguf", "--gguf", str(path), "--output_dir", str(out), "--overwrite", "true"])
    assert json.loads((out / REPORT_FILE).read_text())["gguf"] == json.loads(first)["gguf"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(InputNotFoundError, match="no such GGUF file"):
        load_gguf(tmp_path / "missing.gguf")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(SystemExit):
        cli.main(["import-gguf", "--gguf", str(not_gguf), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert err == f"llmac import-gguf: --gguf {not_gguf}: not a GGUF file (it does not start with 'GGUF')"
    assert not (tmp_path / "out").exists()


# -- the real model ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.ci_may_skip
def test_smollm2_imports_and_answers(smollm2_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    report = import_gguf(smollm2_gguf, tmp_path / "smollm2")
    seconds = time.perf_counter() - start
    print(f"SmolLM2 import: {seconds:.1f} s, max abs logit diff {report['max_abs_logit_diff']:.3g}")
    assert report["max_abs_logit_diff"] <= 1e-4 and report["tie_word_embeddings"] is True
    assert report["architecture"] == "LlamaForCausalLM" and report["parameters"] == 134_515_008

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2")
    assert ties_embeddings(model)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
