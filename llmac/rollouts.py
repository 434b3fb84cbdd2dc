"""Rollouts: sample completions for task rows with an engine, verify them, and keep them as a dataset.

Columns of a rollout dataset (one row per completion):
``prompt_index`` (row of the task), ``question``, ``answer`` (gold), ``prompt`` (chat-templated text
the engine saw), ``sample_index`` (0..n-1),
``completion`` (text), ``steps`` (step strings, delimiters kept; they concatenate to ``completion``),
``step_ends`` (index of each step's last token in ``token_ids``), ``token_ids``, ``logprobs``
(per generated token, raw model distribution), ``finish_reason`` and ``reward``.

With a ``shard_dir``, every finished batch is written there at once (atomically), and a rerun with
the same inputs loads those shards instead of sampling them again: a killed job loses at most the
batch it was on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import datasets
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from llmac.data.loading import format_prompt
from llmac.engines.base import Completion, RolloutEngine, SamplingConfig
from llmac.files import write_text_atomically
from llmac.rewards.registry import RewardFn
from llmac.steps import split_steps


def sample_rollouts(
    engine: RolloutEngine,
    rows: Dataset,
    sampling: SamplingConfig,
    reward_fn: RewardFn,
    batch_size: int = 256,
    progress: bool = True,
    shard_dir: str | Path | None = None,
) -> Dataset:
    """``sampling.n`` verified completions for every row of ``rows`` (``question``, ``answer``)."""
    if len(rows) == 0:
        raise ValueError("no rows to sample rollouts for")
    questions, answers = list(rows["question"]), list(rows["answer"])
    prompts = [format_prompt(engine.tokenizer, q) for q in questions]
    shards = ShardStore(shard_dir, {"prompts": prompts, "answers": answers, "batch_size": batch_size,
                                     "sampling": repr(sampling)}) if shard_dir else None  # fmt: skip
    done: list[Dataset] = []
    bar = tqdm(total=len(prompts), desc="rollouts", unit="prompt", disable=not progress)
    for number, start in enumerate(range(0, len(prompts), batch_size)):
        chunk = range(start, min(start + batch_size, len(prompts)))
        if shards is not None and (finished := shards.load(number)) is not None:
            done.append(finished)
            bar.update(len(chunk))
            continue
        records: dict[str, list] = {key: [] for key in _COLUMNS}
        # VLLMEngine seeds sample k of a call's i-th prompt with seed + i * n + k; offsetting each chunk
        # by start * n keeps every (prompt, sample) seed of the run distinct across chunks.
        chunk_seed = None if sampling.seed is None else sampling.seed + start * sampling.n
        groups = engine.generate([prompts[i] for i in chunk], replace(sampling, seed=chunk_seed))
        texts = [c.text for group in groups for c in group]
        golds = [answers[i] for i, group in zip(chunk, groups, strict=True) for _ in group]
        scores = reward_fn(texts, golds)
        if len(scores) != len(texts):
            raise ValueError(f"reward function returned {len(scores)} rewards for {len(texts)} completions")
        rewards = iter(scores)
        for i, group in zip(chunk, groups, strict=True):
            for k, completion in enumerate(group):
                row = (i, questions[i], answers[i], prompts[i], k)
                _append(records, row, completion, next(rewards), engine.delimiter)
        done.append(Dataset.from_dict(records))
        if shards is not None:
            shards.save(number, done[-1])
        bar.update(len(chunk))
    bar.close()
    return concatenate_datasets(done)


class ShardStore:
    """Finished batches of one rollout job on disk, tied to the job's inputs by a fingerprint."""

    def __init__(self, directory: str | Path, inputs: dict) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        fingerprint = json.dumps(inputs, sort_keys=True)
        stamp = self.directory / "inputs.json"
        if stamp.exists() and stamp.read_text() != fingerprint:
            raise ValueError(
                f"{self.directory} holds rollout shards of other prompts or sampling settings: "
                "use another output directory or delete it"
            )
        if not stamp.exists():
            write_text_atomically(stamp, fingerprint)

    def load(self, number: int) -> Dataset | None:
        path = self.directory / f"shard-{number:05d}"
        return load_from_disk(str(path)) if path.is_dir() else None

    def save(self, number: int, shard: Dataset) -> None:
        save_dataset_atomically(shard, self.directory / f"shard-{number:05d}")


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


def save_dataset_atomically(dataset: Dataset, output_dir: str | Path) -> Path:
    """``save_to_disk`` into a temporary sibling, then rename: a reader never sees half a dataset."""
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    progress_bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar per small shard would drown the job's own progress bar
    try:
        dataset.save_to_disk(str(tmp))
    finally:
        if progress_bars:
            datasets.enable_progress_bars()
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
