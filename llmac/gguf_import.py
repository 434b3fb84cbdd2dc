"""``llmac import-gguf``: a GGUF checkpoint (llama.cpp's format) as a plain ``from_pretrained`` folder.

``transformers`` reads the file (``from_pretrained(folder, gguf_file=name)``, which needs the ``gguf``
package) and dequantizes its weights. The model is saved in float32 safetensors with its tokenizer
(chat template included) and generation config, then reloaded from the new folder and checked: the
saved tokenizer must give the GGUF tokenizer's ids, and the saved model's next-token logits (every
position of a few prompts) must match the GGUF-loaded model's within a tolerance. The measured gap
goes into ``import_report.json``. Tied input/output embeddings stay tied (``tie_word_embeddings``).

The folder is written beside its destination and renamed into place (:mod:`llmac.outputs`): a failed
check or a kill leaves nothing that looks finished, and a folder llmac did not write is never replaced::

    llmac import-gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --output_dir models/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llmac.config import option
from llmac.errors import InputNotFoundError, LlmacError
from llmac.files import write_text_atomically
from llmac.outputs import check_output, make_world_readable, overwrite_field, staged_folder
from llmac.validation import check_fields, require

logger = logging.getLogger(__name__)

COMMAND = "import-gguf"
REPORT_FILE = "import_report.json"
# Prompts of the conversion check: chat-formatted ones (the way an instruct model is used) and plain text.
CHECK_MESSAGES = (
    "What is 17 + 25? Answer with one number.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
)
CHECK_TEXTS = ("The capital of France is", "def fibonacci(n):\n    if n < 2:\n        return n\n")


class ImportCheckError(LlmacError, ValueError):
    """The saved folder does not reproduce the GGUF-loaded model (logits or token ids differ)."""


@dataclass
class ImportGGUFConfig:
    """``llmac import-gguf``: a GGUF file as a plain ``from_pretrained`` folder, float32 safetensors."""

    gguf: str = option("", "The .gguf file to import (any quantization transformers dequantizes).")
    output_dir: str = option("", "Where the from_pretrained folder is written.")
    tolerance: float = option(
        1e-4,
        "Largest max-abs difference allowed between the GGUF-loaded and the saved model's next-token "
        "logits on the check prompts; above it the import is refused.",
        range="[0, inf)",
    )
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.gguf and self.output_dir), "llmac import-gguf needs --gguf and --output_dir")


# -- loading ---------------------------------------------------------------------------------------


def load_gguf(path: str | Path):
    """``(model, tokenizer)`` of the GGUF file at ``path``: float32 weights, no quantization left."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"--gguf {path}: no such GGUF file")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as error:
        raise LlmacError(
            "reading a GGUF file needs the `gguf` package: `pip install gguf` (scripts/setup.sh installs it)"
        ) from error
    with path.open("rb") as stream:
        if stream.read(4) != b"GGUF":
            raise LlmacError(f"--gguf {path}: not a GGUF file (it does not start with 'GGUF')")
    folder, name = str(path.resolve().parent), path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ValueError as error:  # an architecture or tokenizer transformers cannot read from GGUF
        raise LlmacError(f"--gguf {path}: transformers cannot load it ({_first_line(error)})") from error
    _drop_quantization(model)
    return model.eval(), tokenizer


def _drop_quantization(model) -> None:
    """Forget that the weights came from a quantized file: they are plain float32 tensors now, and a
    saved config that still named GGUF quantization would make ``from_pretrained`` look for the file."""
    import torch

    # Parameters must all be float32 (packed GGUF blocks would be integers); buffers may hold indices.
    tensors = [(name, p, True) for name, p in model.named_parameters()]
    tensors += [(name, b, False) for name, b in model.named_buffers()]
    for name, tensor, must_be_float in tensors:
        if tensor.dtype != torch.float32 and (must_be_float or tensor.is_floating_point()):
            raise LlmacError(f"{name} loaded as {tensor.dtype}, not float32: the GGUF was not dequantized")
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = ""


# -- the check -------------------------------------------------------------------------------------


def check_token_ids(tokenizer) -> list[list[int]]:
    """Token ids of the check prompts: chat-formatted messages (if the tokenizer has a chat template)
    and plain texts, each starting with the model's BOS token when the tokenizer adds one."""
    texts = list(CHECK_TEXTS)
    if tokenizer.chat_template:
        texts += [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
            for message in CHECK_MESSAGES
        ]
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def max_logit_gap(reference, candidate, prompts: Sequence[Sequence[int]]) -> float:
    """Largest absolute difference between two causal LMs' logits at every position of ``prompts``."""
    import torch

    gap = 0.0
    with torch.inference_mode():
        for ids in prompts:
            input_ids = torch.tensor([list(ids)])
            expected = reference(input_ids=input_ids).logits.float()
            got = candidate(input_ids=input_ids).logits.float()
            gap = max(gap, (expected - got).abs().max().item())
    return gap


def ties_embeddings(model) -> bool:
    """Whether the output head is the input embedding matrix itself (one tensor, not two copies)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def check_saved_model(model, tokenizer, folder: Path, tolerance: float) -> dict:
    """Reload ``folder`` with plain ``from_pretrained`` and compare it with the GGUF-loaded model.

    Raises :class:`ImportCheckError` when the saved tokenizer gives other ids, tied embeddings come
    back untied, or the logits differ by more than ``tolerance``; else returns the figures.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    saved_tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prompts = check_token_ids(tokenizer)
    if check_token_ids(saved_tokenizer) != prompts:
        raise ImportCheckError(
            f"{folder}: the saved tokenizer splits the check prompts differently from the GGUF tokenizer"
        )
    tied = ties_embeddings(model)
    if ties_embeddings(saved) != tied or bool(saved.config.tie_word_embeddings) != tied:
        raise ImportCheckError(
            f"{folder}: the GGUF model {'ties' if tied else 'does not tie'} its input and output embeddings "
            f"but the saved one reloads with tie_word_embeddings={saved.config.tie_word_embeddings}"
        )
    gap = max_logit_gap(model, saved, prompts)
    if not gap <= tolerance:  # NaN fails too
        raise ImportCheckError(
            f"{folder}: the saved model's logits differ from the GGUF-loaded model's by up to {gap:.3g} "
            f"(tolerance {tolerance:g}); nothing was written"
        )
    return {
        "max_abs_logit_diff": gap,
        "tolerance": tolerance,
        "check_prompts": len(prompts),
        "check_tokens": sum(map(len, prompts)),
        "tie_word_embeddings": tied,
    }


# -- the command -----------------------------------------------------------------------------------


def import_gguf(
    gguf: str | Path, output_dir: str | Path, tolerance: float = 1e-4, overwrite: bool = False
) -> dict:
    """Write ``gguf`` as a checked ``from_pretrained`` folder at ``output_dir``; returns its report."""
    gguf, output_dir = Path(gguf), Path(output_dir)
    check_output(output_dir, COMMAND, overwrite=overwrite, sources=[gguf])
    start = time.perf_counter()
    model, tokenizer = load_gguf(gguf)
    loaded = time.perf_counter()
    with staged_folder(output_dir, COMMAND) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        saved = time.perf_counter()
        report = {
            "gguf": str(gguf.resolve()),
            "architecture": (model.config.architectures or [type(model).__name__])[0],
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": "float32",
            **check_saved_model(model, tokenizer, staging, tolerance),
            "seconds": {
                "load_gguf": round(loaded - start, 2),
                "save": round(saved - loaded, 2),
                "check": round(time.perf_counter() - saved, 2),
            },
        }
        write_text_atomically(staging / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        make_world_readable(staging)
    return report


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def main(argv: Sequence[str] | None = None) -> dict:
    from llmac.config import parse_config

    (config,) = parse_config([ImportGGUFConfig], argv, prog=f"llmac {COMMAND}")
    report = import_gguf(config.gguf, config.output_dir, config.tolerance, config.overwrite)
    print(
        f"llmac {COMMAND}: wrote {report['architecture']} ({report['parameters']:,} parameters) to "
        f"{Path(config.output_dir).resolve()}; max abs logit difference GGUF vs saved "
        f"{report['max_abs_logit_diff']:.3g} over {report['check_tokens']} positions"
    )
    return report
