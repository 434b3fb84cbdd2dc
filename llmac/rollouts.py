"""Rollouts: sample completions for task rows with an engine, verify them, and keep them as a dataset.

Columns of a rollout dataset (one row per completion):
``prompt_index`` (row of the task), ``question``, ``answer`` (gold), ``prompt`` (chat-templated text
the engine saw), ``sample_index`` (0..n-1),
``completion`` (text), ``steps`` (step strings, delimiters kept; they concatenate to ``completion``),
``step_ends`` (index of each step's last token in ``token_ids``), ``token_ids``, ``logprobs``
(per generated token, raw model distribution), ``finish_reason`` and ``reward``.

With a ``shard_dir``, every finished batch is written there at once (atomically), and a rerun with
the same inputs loads those shards instead of sampling them again: a killed job loses at most the
batch it was on. The inputs are the prompts, answers, sampling settings and batch size, the model's
weights (a fingerprint of the engine's model folder), the reward function and the step delimiter;
a rerun with any of them changed is refused rather than mixing two jobs' shards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import datasets
from datasets import Dataset, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from llmac.data.loading import format_prompt
from llmac.engines.base import Completion, RolloutEngine, SamplingConfig
from llmac.errors import OutputError
from llmac.files import write_text_atomically
from llmac.fingerprints import engine_model_fingerprint, reward_fingerprint
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn
from llmac.steps import split_steps

logger = logging.getLogger(__name__)


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
    shards = None
    if shard_dir is not None:
        inputs = {"prompts": prompts, "answers": answers, "batch_size": batch_size, "sampling": repr(sampling),
                  **job_fingerprint(engine, reward_fn)}  # fmt: skip
        shards = ShardStore(shard_dir, inputs, job="rollout")

    def sample(number: int, start: int, stop: int) -> Dataset:
        records: dict[str, list] = {key: [] for key in _COLUMNS}
        chunk = range(start, stop)
        # VLLMEngine seeds sample k of a call's i-th prompt with seed + i * n + k; offsetting each chunk
        # by start * n keeps every (prompt, sample) seed of the run distinct across chunks.
        chunk_seed = None if sampling.seed is None else sampling.seed + start * sampling.n
        groups = engine.generate([prompts[i] for i in chunk], replace(sampling, seed=chunk_seed))
        texts = [c.text for group in groups for c in group]
        golds = [answers[i] for i, group in zip(chunk, groups, strict=True) for _ in group]
        rewards = iter(verify(reward_fn, texts, golds))
        for i, group in zip(chunk, groups, strict=True):
            for k, completion in enumerate(group):
                row = (i, questions[i], answers[i], prompts[i], k)
                _append(records, row, completion, next(rewards), engine.delimiter)
        return Dataset.from_dict(records)

    return run_in_shards(len(prompts), batch_size, sample, shards, "rollouts", "prompt", progress)


def run_in_shards(size: int, batch_size: int, compute: Callable[[int, int, int], Dataset],
                  shards: ShardStore | None, desc: str, unit: str, progress: bool = True) -> Dataset:  # fmt: skip
    """``compute(number, start, stop)`` for every batch ``number`` of ``range(size)``, concatenated in
    order. With ``shards``, each finished batch is saved there and a rerun loads it instead."""
    done: list[Dataset] = []
    bar = tqdm(total=size, desc=desc, unit=unit, disable=not progress)
    for number, start in enumerate(range(0, size, batch_size)):
        stop = min(start + batch_size, size)
        shard = shards.load(number) if shards is not None else None
        if shard is None:
            shard = compute(number, start, stop)
            if shards is not None:
                shards.save(number, shard)
        done.append(shard)
        bar.update(stop - start)
    bar.close()
    return concatenate_datasets(done)


class ShardStore:
    """Finished batches of one job on disk, tied to everything that changes their rows.

    ``inputs`` (JSON-able) is recorded in ``inputs.json`` when the store is created; reopening the
    store with other inputs is refused (naming what changed) instead of mixing shards of two jobs.
    A folder that exists but is neither empty nor a shard store is refused too: llmac does not
    write shards among files it did not write.
    """

    STAMP = "inputs.json"

    def __init__(self, directory: str | Path, inputs: dict, job: str = "rollout") -> None:
        self.directory = Path(directory)
        stamp = self.directory / self.STAMP
        if self.directory.is_dir() and not stamp.exists() and any(self.directory.iterdir()):
            raise OutputError(
                f"{self.directory} is not empty and holds no {job} shards (no {self.STAMP}): "
                "llmac keeps shards only in a folder it created; choose another output folder"
            )
        inputs = json.loads(json.dumps(inputs, sort_keys=True, default=str))  # as it reads back
        if stamp.exists():
            recorded = _read_inputs(stamp)
            changed = sorted(k for k in recorded.keys() | inputs.keys() if recorded.get(k) != inputs.get(k))
            if changed:
                raise OutputError(
                    f"{self.directory} holds {job} shards of another job (changed: {', '.join(changed)}): "
                    f"use another output folder, or delete {self.directory} to start this job over"
                )
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_text_atomically(stamp, json.dumps(inputs, sort_keys=True))

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


def job_fingerprint(engine: RolloutEngine, reward_fn: RewardFn) -> dict:
    """What besides its rows and settings decides a job's samples: the model, reward and delimiter."""
    model = engine_model_fingerprint(engine)
    if model is None:
        logger.warning("the engine's weights cannot be fingerprinted: shards are not tied to the model")
    return {"model": model, "reward": reward_fingerprint(reward_fn), "delimiter": engine.delimiter}


def _read_inputs(stamp: Path) -> dict:
    try:
        recorded = json.loads(stamp.read_text())
    except ValueError:
        recorded = None
    if not isinstance(recorded, dict):
        raise OutputError(f"{stamp} is not a shard store's inputs record: delete its folder to start over")
    return recorded


def save_dataset_atomically(
    dataset: Dataset, output_dir: str | Path, command: str = "dataset", overwrite: bool = False
) -> Path:
    """``save_to_disk`` into a temporary sibling, then rename: a reader never sees half a dataset.

    An existing ``output_dir`` is replaced only if llmac wrote it and ``overwrite`` is set (see
    :func:`llmac.outputs.check_output`); the folder is marked as ``llmac <command>``'s.
    """
    from llmac.outputs import check_output, staged_folder

    output_dir = Path(output_dir)
    check_output(output_dir, command, overwrite=overwrite)
    progress_bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar per small shard would drown the job's own progress bar
    try:
        with staged_folder(output_dir, command) as staging:
            dataset.save_to_disk(str(staging))
    finally:
        if progress_bars:
            datasets.enable_progress_bars()
    return output_dir


def group_rows(prompt_index: Sequence[int]) -> list[list[int]]:
    """Row indices of each prompt's samples, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for row, index in enumerate(prompt_index):
        groups.setdefault(index, []).append(row)
    return list(groups.values())
