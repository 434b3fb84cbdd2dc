"""Rollouts: sample completions for task rows with an engine, verify them, and keep them as a dataset.

Columns of a rollout dataset (one row per completion):
``prompt_index`` (row of the task), ``question``, ``answer`` (gold), ``prompt`` (chat-templated text
the engine saw), ``sample_index`` (0..n-1),
``completion`` (text), ``steps`` (step strings, delimiters kept; they concatenate to ``completion``),
``step_ends`` (index of each step's last token in ``token_ids``), ``token_ids``, ``logprobs``
(per generated token, raw model distribution), ``finish_reason`` and ``reward``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from datasets import Dataset
from tqdm.auto import tqdm

from llmac.data.loading import format_prompt
from llmac.engines.base import Completion, RolloutEngine, SamplingConfig
from llmac.steps import split_steps

RewardFn = Callable[[list[str], list[str]], list[float]]


def sample_rollouts(
    engine: RolloutEngine,
    rows: Dataset,
    sampling: SamplingConfig,
    reward_fn: RewardFn,
    batch_size: int = 256,
    progress: bool = True,
) -> Dataset:
    """``sampling.n`` verified completions for every row of ``rows`` (``question``, ``answer``)."""
    questions, answers = list(rows["question"]), list(rows["answer"])
    prompts = [format_prompt(engine.tokenizer, q) for q in questions]
    records: dict[str, list] = {key: [] for key in _COLUMNS}
    bar = tqdm(total=len(prompts), desc="rollouts", unit="prompt", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        chunk_sampling = _with_seed(sampling, None if sampling.seed is None else sampling.seed + start)
        groups = engine.generate([prompts[i] for i in chunk], chunk_sampling)
        texts = [c.text for group in groups for c in group]
        golds = [answers[i] for i, group in zip(chunk, groups, strict=True) for _ in group]
        rewards = iter(reward_fn(texts, golds))
        for i, group in zip(chunk, groups, strict=True):
            for k, completion in enumerate(group):
                row = (i, questions[i], answers[i], prompts[i], k)
                _append(records, row, completion, next(rewards), engine.delimiter)
        bar.update(len(chunk))
    bar.close()
    return Dataset.from_dict(records)


_COLUMNS = (
    "prompt_index", "question", "answer", "prompt", "sample_index", "completion", "steps",
    "step_ends", "token_ids", "logprobs", "finish_reason", "reward",
)  # fmt: skip


def _append(records, row: tuple, completion: Completion, reward: float, delimiter: str) -> None:
    values = (
        *row, completion.text, split_steps(completion.text, delimiter),
        completion.step_ends, completion.token_ids, completion.logprobs, completion.finish_reason, float(reward),
    )  # fmt: skip
    for key, value in zip(_COLUMNS, values, strict=True):
        records[key].append(value)


def _with_seed(sampling: SamplingConfig, seed: int | None) -> SamplingConfig:
    from dataclasses import replace

    return replace(sampling, seed=seed)


def save_dataset_atomically(dataset: Dataset, output_dir: str | Path) -> Path:
    """``save_to_disk`` into a temporary sibling, then rename: a reader never sees half a dataset."""
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    dataset.save_to_disk(str(tmp))
    if output_dir.exists():
        shutil.rmtree(output_dir)
    tmp.rename(output_dir)
    return output_dir


def group_rows(prompt_index: Sequence[int]) -> list[list[int]]:
    """Row indices of each prompt's samples, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, index in enumerate(prompt_index):
        groups.setdefault(index, []).append(row)
    return list(groups.values())
