"""The transformers rollout engine: batched ``generate`` with left padding, raw log-probs and step stops.

It runs anywhere transformers does and is the reference the vLLM engine is tested against. Sampling
uses only the fields of :class:`SamplingConfig`: the model's own ``generation_config.json`` sampling
defaults (a checkpoint's ``top_k``, ``repetition_penalty``, ...) are not applied, as in vLLM when
sampling parameters are given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LogitsProcessor, StoppingCriteria

from llmac.engines.base import BaseEngine, RawCompletion, SamplingConfig, Tokens, Weights
from llmac.engines.tied import complete_tied_weights, tied_weight_names
from llmac.models import load_tokenizer
from llmac.steps import DEFAULT_DELIMITER


class RawLogprobRecorder(LogitsProcessor):
    """Records the raw (temperature-1) log-prob of every generated token.

    Passed to ``generate`` as a custom processor, it runs before the temperature/top-k/top-p warpers
    and sees the model's float32 logits. It keeps one step's log-softmax and gathers it at the token
    chosen from it on the next call, so memory is one ``[batch, vocab]`` tensor, not one per step as
    ``output_logits=True`` would keep.
    """

    def __init__(self) -> None:
        self.token_logprobs: list[torch.Tensor] = []
        self._pending: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._pending is not None:
            self.token_logprobs.append(self._pending.gather(1, input_ids[:, -1:]).squeeze(1))
        self._pending = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor, num_generated: int) -> torch.Tensor:
        """``[batch, num_generated]`` log-probs of the generated tokens of ``sequences``."""
        if self._pending is not None and len(self.token_logprobs) < num_generated:
            self.token_logprobs.append(self._pending.gather(1, sequences[:, -1:]).squeeze(1))
        self._pending = None
        return torch.stack(self.token_logprobs[:num_generated], dim=1)


class StepDelimiterStop(StoppingCriteria):
    """Stops each row once its generated text contains ``delimiter``; remembers where.

    ``stop_lengths[row]`` is the number of generated tokens when the delimiter was completed (the
    row is cut right after that token), or -1. Only a window of the last tokens is decoded per step:
    a delimiter completed by the newest token lies within its last ``len(delimiter) + 4`` tokens.
    """

    def __init__(self, tokenizer, delimiter: str, prompt_width: int, batch_size: int, device) -> None:
        self.tokenizer = tokenizer
        self.delimiter = delimiter
        self.prompt_width = prompt_width
        self.window = len(delimiter) + 4
        self.stop_lengths = torch.full((batch_size,), -1, dtype=torch.long)
        self.device = device

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_width
        start = input_ids.shape[1] - min(generated, self.window)
        running = (self.stop_lengths < 0).nonzero().squeeze(1).tolist()
        if running:
            windows = input_ids[running, start:].tolist()
            texts = self.tokenizer.batch_decode(windows, skip_special_tokens=True)
            for row, text in zip(running, texts, strict=True):
                if self.delimiter in text:
                    self.stop_lengths[row] = generated
        return (self.stop_lengths >= 0).to(self.device)


class HFEngine(BaseEngine):
    """Rollouts with transformers ``generate``: prompts repeated ``n`` times, left-padded, in batches.

    ``model_or_path`` is a loaded causal LM (shared, e.g. with a trainer; then pass ``tokenizer``) or
    a checkpoint directory. ``batch_size`` counts sequences (prompt copies), not prompts.
    """

    def __init__(
        self,
        model_or_path: torch.nn.Module | str | Path,
        tokenizer=None,
        delimiter: str = DEFAULT_DELIMITER,
        batch_size: int = 64,
        dtype: str | torch.dtype = "auto",
    ) -> None:
        if isinstance(model_or_path, str | Path):
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_or_path)
            torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
            model = AutoModelForCausalLM.from_pretrained(
                str(model_or_path), dtype=torch_dtype, use_safetensors=True
            )
        else:
            if tokenizer is None:
                raise ValueError("HFEngine needs a tokenizer when given a model object")
            model = model_or_path
        if batch_size < 1:
            raise ValueError(f"HFEngine batch_size must be >= 1, got {batch_size}")
        super().__init__(tokenizer, delimiter)
        # The weights' folder (None for a model object), until load_weights replaces them.
        self.model_path = Path(model_or_path) if isinstance(model_or_path, str | Path) else None
        self.model = model
        self.batch_size = batch_size
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.eos_token_ids[0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def load_weights(self, state_dict: Weights) -> None:
        """Load ``state_dict`` (every weight); a tied model's head may be left out, as its saved file does."""
        self.model_path = None
        tied = getattr(self.model, "all_tied_weights_keys", None) or tied_weight_names(self.model.config)
        with torch.no_grad():
            self.model.load_state_dict(dict(complete_tied_weights(state_dict, tied)), strict=True)

    # -- sampling ------------------------------------------------------------------------------
    def _sample(
        self, prompts: list[Tokens], sampling: SamplingConfig, stop_at_delimiter: bool
    ) -> list[list[RawCompletion]]:
        # One row per (prompt, sample); rows of similar length share a batch to limit padding.
        rows = [(i, j) for i in range(len(prompts)) for j in range(sampling.n)]
        rows.sort(key=lambda row: len(prompts[row[0]]))
        results: list[list[RawCompletion | None]] = [[None] * sampling.n for _ in prompts]
        was_training = self.model.training
        self.model.eval()
        try:
            with _seeded(sampling.seed, self.device), torch.no_grad():
                for start in range(0, len(rows), self.batch_size):
                    batch = rows[start : start + self.batch_size]
                    outs = self._generate_batch([prompts[i] for i, _ in batch], sampling, stop_at_delimiter)
                    for (i, j), out in zip(batch, outs, strict=True):
                        results[i][j] = out
        finally:
            self.model.train(was_training)
        return results

    def _generate_batch(
        self, prompts: list[Tokens], sampling: SamplingConfig, stop_at_delimiter: bool
    ) -> list[RawCompletion]:
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
            attention_mask[row, width - len(prompt) :] = 1
        device = self.device
        recorder = RawLogprobRecorder()
        stopper = StepDelimiterStop(self.tokenizer, self.delimiter, width, len(prompts), device)
        sequences = self._with_plain_generation_config(
            lambda: self.model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=self._generation_config(sampling),
                logits_processor=[recorder],
                stopping_criteria=[stopper] if stop_at_delimiter else [],
            )
        ).cpu()
        generated = sequences[:, width:]
        logprobs = recorder.finish(sequences, generated.shape[1]).cpu()
        return [
            self._cut(
                generated[row].tolist(), logprobs[row].tolist(), int(stopper.stop_lengths[row]), sampling
            )
            for row in range(len(prompts))
        ]

    def _cut(
        self, tokens: Tokens, logprobs: list[float], stop_length: int, sampling: SamplingConfig
    ) -> RawCompletion:
        """Drop what ``generate`` padded after the row finished: keep through EOS or the step's last token."""
        end, reason = len(tokens), "length"
        eos = next((k for k, t in enumerate(tokens) if t in self.eos_token_ids), None)
        if eos is not None:
            end, reason = eos + 1, "stop"
        if 0 < stop_length <= end:
            end, reason = stop_length, "step"
        if reason == "length" and end < sampling.max_new_tokens:
            raise RuntimeError(f"generate returned {end} tokens without EOS, step end or the length limit")
        return RawCompletion(token_ids=tokens[:end], logprobs=logprobs[:end], finish_reason=reason)

    def _generation_config(self, sampling: SamplingConfig) -> GenerationConfig:
        common = {
            "max_new_tokens": sampling.max_new_tokens,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "use_cache": True,
        }
        if sampling.greedy:
            return GenerationConfig(do_sample=False, **common)
        return GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            **common,
        )

    def _with_plain_generation_config(self, run):
        """Run ``run`` while the model's saved generation defaults are out of the way (see module doc)."""
        saved = self.model.generation_config
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id
        )
        try:
            return run()
        finally:
            self.model.generation_config = saved


def _eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the model's generation config and the tokenizer (vLLM stops on both too)."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.extend([configured] if isinstance(configured, int) else configured)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("neither the model's generation_config nor the tokenizer names an EOS token")
    return ids


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for a block without disturbing the caller's (a no-op when ``seed`` is None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
