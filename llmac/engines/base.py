"""The rollout engine interface shared by the vLLM and transformers implementations.

An engine turns token-id prompts into sampled completions with per-token log-probs and step ends.
It knows nothing about RL: trainers call ``generate``/``sample_step``/``continue_from`` and push new
weights with ``load_weights``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import torch

from llmac.config import option
from llmac.steps import DEFAULT_DELIMITER, step_token_ends
from llmac.validation import check_fields, require

# A state dict, or its (name, tensor) pairs as they are produced (e.g. gathered layer by layer).
Weights = Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]

Tokens = list[int]
PromptLike = str | Sequence[int]


@dataclass
class SamplingConfig:
    """How to sample. Both engines read the same fields, so a recipe never names an engine's own API."""

    n: int = option(1, "Completions per prompt.", range="[1, inf)")
    temperature: float = option(1.0, "0 means greedy decoding.", range="[0, inf)")
    top_p: float = option(1.0, "Nucleus sampling mass.", range="(0, 1]")
    top_k: int = option(-1, "Top-k sampling; -1 disables it.", range="[-1, inf)")
    max_new_tokens: int = option(256, "Tokens generated at most per completion.", range="[1, inf)")
    seed: int | None = option(None, "Seed for reproducible sampling.", range="[0, inf)")

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, self.top_k != 0, "top_k = 0 samples nothing: use -1 to disable top-k")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class RawCompletion:
    """What an engine backend returns for one sample, before llmac adds text and steps."""

    token_ids: Tokens
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS), "length" (max_new_tokens) or "step" (hit the step delimiter)


@dataclass
class Completion(RawCompletion):
    """One sampled continuation of a prompt (and prefix, if one was given).

    ``token_ids``/``logprobs`` cover only the generated tokens. ``logprobs[i]`` is the model's
    log-probability of token ``i`` at temperature 1 (the raw distribution, whatever the sampling
    temperature). ``step_ends[k]`` is the index of the last token of step ``k`` of ``text``.
    """

    text: str = ""
    step_ends: list[int] = field(default_factory=list)


@runtime_checkable
class RolloutEngine(Protocol):
    """What every pipeline may ask of a rollout engine."""

    tokenizer: object
    delimiter: str

    def generate(self, prompts: Sequence[PromptLike], sampling: SamplingConfig) -> list[list[Completion]]:
        """``sampling.n`` completions for every prompt, to EOS or ``max_new_tokens``."""
        ...

    def sample_step(
        self, prompts: Sequence[PromptLike], prefixes: Sequence[PromptLike], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """``sampling.n`` candidates for the next step after each prompt + prefix.

        Generation stops at the first token that completes the delimiter. A token that also carries
        the start of the following text (possible with BPE merges across the delimiter) brings that
        text along, so ``step_ends`` can then hold two entries.
        """
        ...

    def continue_from(
        self, prompts: Sequence[PromptLike], prefixes: Sequence[PromptLike], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        """``sampling.n`` completions of the rest of the response after each prompt + prefix."""
        ...

    def load_weights(self, state_dict: Weights) -> None:
        """Replace the model's weights with ``state_dict`` (Hugging Face parameter names)."""
        ...

    def close(self) -> None:
        """Free the engine's resources."""
        ...


class BaseEngine(ABC):
    """Shared input handling and step bookkeeping; backends implement :meth:`_sample`."""

    def __init__(self, tokenizer, delimiter: str = DEFAULT_DELIMITER) -> None:
        if not delimiter:
            raise ValueError("step delimiter must be a non-empty string")
        self.tokenizer = tokenizer
        self.delimiter = delimiter

    # -- backend hooks -------------------------------------------------------------------------
    @abstractmethod
    def _sample(
        self, prompts: list[Tokens], sampling: SamplingConfig, stop_at_delimiter: bool
    ) -> list[list[RawCompletion]]:
        """Sample ``sampling.n`` completions per token prompt; stop after the delimiter if asked."""

    @abstractmethod
    def load_weights(self, state_dict: Weights) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources; the default has none to free."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- public API ----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[PromptLike], sampling: SamplingConfig) -> list[list[Completion]]:
        return self._run([self.encode(p) for p in prompts], sampling, stop_at_delimiter=False)

    def sample_step(
        self, prompts: Sequence[PromptLike], prefixes: Sequence[PromptLike], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        return self._run(self._join(prompts, prefixes), sampling, stop_at_delimiter=True)

    def continue_from(
        self, prompts: Sequence[PromptLike], prefixes: Sequence[PromptLike], sampling: SamplingConfig
    ) -> list[list[Completion]]:
        return self._run(self._join(prompts, prefixes), sampling, stop_at_delimiter=False)

    def encode(self, text_or_ids: PromptLike) -> Tokens:
        """Token ids of a prompt or prefix; text is taken as already chat-templated.

        A text prefix is tokenized on its own, which can differ from the tokens the model generated
        for it; pass generated token ids to continue exactly where a sample left off.
        """
        if isinstance(text_or_ids, str):
            return list(self.tokenizer(text_or_ids, add_special_tokens=False)["input_ids"])
        return [int(t) for t in text_or_ids]

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    # -- helpers -------------------------------------------------------------------------------
    def _join(self, prompts: Sequence[PromptLike], prefixes: Sequence[PromptLike]) -> list[Tokens]:
        if len(prompts) != len(prefixes):
            raise ValueError(f"{len(prompts)} prompts but {len(prefixes)} prefixes")
        return [self.encode(p) + self.encode(x) for p, x in zip(prompts, prefixes, strict=True)]

    def _run(
        self, prompts: list[Tokens], sampling: SamplingConfig, stop_at_delimiter: bool
    ) -> list[list[Completion]]:
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {i} is empty: an engine needs at least one prompt token")
        if sampling.greedy and sampling.n > 1:
            # Greedy samples are all the same: decode once, copy (vLLM refuses greedy with n > 1).
            once = self._sample(prompts, replace(sampling, n=1), stop_at_delimiter)
            raw = [[_copy_raw(group[0]) for _ in range(sampling.n)] for group in once]
        else:
            raw = self._sample(prompts, sampling, stop_at_delimiter)
        return [[self._finish(r) for r in group] for group in raw]

    def _finish(self, raw: RawCompletion) -> Completion:
        ids = raw.token_ids
        text = self.decode(ids)
        ends = step_token_ends(ids, self.decode, self.delimiter) if ids else []
        return Completion(
            token_ids=ids, logprobs=raw.logprobs, finish_reason=raw.finish_reason, text=text, step_ends=ends
        )


def _copy_raw(raw: RawCompletion) -> RawCompletion:
    return RawCompletion(
        token_ids=list(raw.token_ids), logprobs=list(raw.logprobs), finish_reason=raw.finish_reason
    )
