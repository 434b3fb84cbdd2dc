"""Does an exported folder behave the same everywhere it is loaded? Greedy text from plain transformers
against the rollout engine, and a critic's scores before and after export.

A user's first check after ``llmac export``: the folder loads with ``from_pretrained`` alone, and HF's
greedy ``generate`` writes the same tokens as vLLM serving the same folder. Both paths get the same
prompt token ids, so only the models' arithmetic can differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from llmac.engines import EngineConfig, SamplingConfig, build_engine


@dataclass(frozen=True)
class GreedyParity:
    """How many prompts' greedy completions are token for token the same in HF and the engine."""

    num_prompts: int
    identical: int
    first_divergence: int | None  # token index of the first difference in the first differing prompt
    engine: str

    @property
    def all_identical(self) -> bool:
        return self.identical == self.num_prompts

    def summary(self) -> str:
        where = (
            "" if self.first_divergence is None else f" (first difference at token {self.first_divergence})"
        )
        return (
            f"{self.identical}/{self.num_prompts} greedy completions identical in HF and {self.engine}{where}"
        )


def _until_eos(ids: Sequence[int], eos_ids: set[int]) -> list[int]:
    out = []
    for token in ids:
        if token in eos_ids:
            break
        out.append(int(token))
    return out


def _eos_ids(generation_config) -> set[int]:
    eos = generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()


@torch.no_grad()
def hf_greedy(
    folder: str | Path, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int
) -> list[list[int]]:
    """Greedy completions (up to EOS, excluded) of ``prompt_ids`` by plain ``AutoModelForCausalLM``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    eos = _eos_ids(model.generation_config)
    pad = next(iter(eos), 0)
    completions = []
    for ids in prompt_ids:  # one at a time: no padding, so nothing but the model decides the tokens
        inputs = torch.tensor([list(ids)])
        output = model.generate(
            inputs, attention_mask=torch.ones_like(inputs), do_sample=False, max_new_tokens=max_new_tokens,
            pad_token_id=pad, top_p=None, top_k=None, temperature=None,
        )  # fmt: skip
        completions.append(_until_eos(output[0, inputs.shape[1] :].tolist(), eos))
    return completions


def greedy_parity(
    folder: str | Path, prompts: Sequence[str], max_new_tokens: int, engine_config: EngineConfig
) -> GreedyParity:
    """Greedy completions of ``prompts`` (chat-formatted text) from HF and from ``engine_config``'s engine."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    hf = hf_greedy(folder, prompt_ids, max_new_tokens)
    eos = _eos_ids(GenerationConfig.from_pretrained(str(folder)))
    engine = build_engine(str(folder), engine_config)
    try:
        greedy = SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
        served = [_until_eos(c[0].token_ids, eos) for c in engine.generate(prompt_ids, greedy)]
        engine_name = type(engine).__name__
    finally:
        engine.close()
    identical, first = 0, None
    for a, b in zip(hf, served, strict=True):
        if a == b:
            identical += 1
        elif first is None:
            first = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
            )
    return GreedyParity(len(prompts), identical, first, engine_name)


@torch.no_grad()
def critic_export_gap(trained: str | Path, exported: str | Path, texts: Sequence[str]) -> float:
    """Largest |score difference| over ``texts`` between llmac's loading of the trained critic and plain
    ``AutoModelForTokenClassification`` on its exported folder."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from llmac.critic.model import load_critic

    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    ours = load_critic(trained).eval()
    plain = AutoModelForTokenClassification.from_pretrained(str(exported), dtype=torch.float32).eval()
    gap = 0.0
    for text in texts:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        gap = max(gap, (ours(input_ids=ids).logits - plain(input_ids=ids).logits).abs().max().item())
    return gap
