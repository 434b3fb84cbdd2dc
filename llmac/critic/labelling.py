"""Step labels by Monte-Carlo completion (Math-Shepherd): how often does a step prefix still reach the gold?

For a solution with steps ``a_0 .. a_{T-1}``, every proper prefix ``a_0 .. a_t`` (``t < T-1``) is
continued ``N`` times by the actor and each full text (prefix + continuation) is verified against the
gold answer. Step ``t`` gets the soft label ``#correct / N`` and the hard label ``1 if any correct``.
The last step needs no sampling: its prefix is the whole solution, so both its labels are the
solution's own outcome (1 if its final answer is correct, else 0), as in Math-Shepherd.

Prefixes. A rollout (rows with ``token_ids`` + ``step_ends``, from :func:`llmac.rollouts.sample_rollouts`)
is continued from the exact tokens the actor generated: ``token_ids[: step_ends[t] + 1]``, which ends
with the token holding step ``t``'s delimiter (re-tokenizing the text could give other tokens; a
token that also carries the start of the next step brings that start into the prefix). A
``completion`` text without token ids is cut with :func:`~llmac.steps.split_steps`: the prefix is the
text of its first ``t + 1`` steps, delimiters and blank lines kept, so it ends with the delimiter. A
``completions`` list of clean steps is joined with :func:`~llmac.steps.join_steps` and gets a trailing
delimiter: ``join_steps(steps[: t + 1]) + delimiter``, the text the critic reads for that step. The
prompt is always ``format_prompt(engine.tokenizer, question)``.

Cost. All ``N`` continuations of a prefix are one request (``n = N``) and all prefixes of a batch
of solutions are one engine call, so an engine with prefix caching (vLLM) computes each prefix once.

Determinism. Continuation ``k`` of the ``j``-th prefix of the whole job (prefixes counted over the
input rows in order) is asked for with seed ``config.seed + j * N + k`` (via the call seed and
VLLMEngine's per-request seeds), so with vLLM the labels do not depend on how rows are batched.
HFEngine seeds its generator once per call, so its samples depend on the batch (same
``batch_size``, same labels). With a ``shard_dir`` every finished batch is saved at once and a rerun
continues after the last saved batch: the result equals an uninterrupted run with the same seed.
Shards are tied to the solutions, the config, the delimiter, the model's weights and the reward
function (:func:`llmac.rollouts.job_fingerprint`): a rerun with any of them changed is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from datasets import Dataset, Features, List, Value

from llmac.config import option
from llmac.data.loading import format_prompt
from llmac.engines.base import PromptLike, RolloutEngine, SamplingConfig
from llmac.field_groups import SamplingFields
from llmac.rewards.checks import verify
from llmac.rollouts import RewardFn, ShardStore, job_fingerprint, run_in_shards
from llmac.steps import clean_steps, join_steps, split_steps, step_spans
from llmac.validation import check_fields

logger = logging.getLogger(__name__)

# The Math-Shepherd / TRL-PRM layout every step-label dataset starts with (`llmac critic train` reads it).
PRM_COLUMNS = {
    "prompt": Value("string"),
    "completions": List(Value("string")),
    "labels": List(Value("float64")),
    "hard_labels": List(Value("int64")),
    "answer": Value("string"),
}
LABEL_FEATURES = Features(
    {**PRM_COLUMNS, "solution_reward": Value("float64"), "source_index": Value("int64")}
)


@dataclass
class MCLabelConfig(SamplingFields):
    """Monte-Carlo step labelling (Math-Shepherd): how many continuations, how they are sampled
    (temperature, top_p and max_new_tokens: :class:`~llmac.field_groups.SamplingFields`)."""

    num_rollouts: int = option(
        8, "N: continuations sampled per step prefix (8 in Math-Shepherd).", range="[1, inf)"
    )
    seed: int = option(
        0, "Base seed; each prefix's continuations get seeds derived from it.", range="[0, inf)"
    )
    batch_size: int = option(
        64, "Solutions per engine call and per shard (all their prefixes go in one call).", range="[1, inf)"
    )
    correct_threshold: float = option(
        0.5, "A verified text counts as correct when its reward is >= this (math rewards are 0/1)."
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def sampling(self, seed: int) -> SamplingConfig:
        """The sampling settings of one engine call whose first continuation has seed ``seed``."""
        return self.sampling_config(self.num_rollouts, seed)


# -- pure label arithmetic -------------------------------------------------------------------------
def mc_step_labels(
    correct_counts: Sequence[int], num_rollouts: int, solution_correct: bool
) -> tuple[list[float], list[int]]:
    """Soft and hard labels of a solution's steps.

    ``correct_counts[t]`` is how many of the ``num_rollouts`` continuations of the prefix ending
    with step ``t`` were correct, for every step but the last; the last step's labels are the
    solution's own outcome.
    """
    for count in correct_counts:
        if not 0 <= count <= num_rollouts:
            raise ValueError(f"{count} correct continuations out of {num_rollouts}")
    soft = [count / num_rollouts for count in correct_counts] + [float(solution_correct)]
    hard = [int(count > 0) for count in correct_counts] + [int(solution_correct)]
    return soft, hard


def prefix_seed_offsets(prefix_counts: Sequence[int]) -> list[int]:
    """Index of each solution's first prefix among all prefixes of the job (a running sum)."""
    offsets, total = [], 0
    for count in prefix_counts:
        offsets.append(total)
        total += count
    return offsets


# -- input rows ------------------------------------------------------------------------------------
@dataclass
class _Solution:
    """One solution ready to label: its prompt, clean steps and the prefixes to continue."""

    index: int
    prompt: str
    question: str
    answer: str
    steps: list[str]  # clean
    prefixes: list[PromptLike]  # one per step but the last: text, or generated token ids
    prefix_texts: list[str]  # what each prefix reads as (the start of the text to verify)
    text: str  # the whole solution


class _Solutions:
    """Reads the solutions of a labelling job, in whichever of the three layouts they come."""

    def __init__(self, rows: Dataset, engine: RolloutEngine) -> None:
        present = set(rows.column_names)
        for name in ("question", "answer"):
            if name not in present:
                raise ValueError(f"solutions to label need a {name!r} column; they have {sorted(present)}")
        if "completion" in present and "completions" in present:
            raise ValueError("solutions have both 'completion' (text) and 'completions' (steps): keep one")
        if "completions" in present:
            self.layout = "steps"
        elif "completion" in present:
            self.layout = "tokens" if {"token_ids", "step_ends"} <= present else "text"
        else:
            raise ValueError(
                "solutions to label need a 'completion' column (text, e.g. rollouts) or a 'completions' "
                f"column (list of step strings); they have {sorted(present)}"
            )
        self.rows, self.tokenizer, self.delimiter = rows, engine.tokenizer, engine.delimiter
        self.solution_columns = {
            "steps": ["completions"],
            "text": ["completion"],
            "tokens": ["completion", "token_ids", "step_ends"],
        }[self.layout]
        self.prompts: list[str] = []
        self.step_counts: list[int] = []
        digest = hashlib.sha256()
        columns = ["question", "answer", *self.solution_columns]
        for batch in rows.select_columns(columns).iter(1024):
            for question, answer, *solution in zip(*(batch[c] for c in columns), strict=True):
                self.prompts.append(format_prompt(self.tokenizer, question))
                self.step_counts.append(self._count_steps(len(self.prompts) - 1, solution[0]))
                digest.update(json.dumps([self.prompts[-1], str(answer), *solution]).encode())
        self.digest = digest.hexdigest()

    def _count_steps(self, index: int, solution) -> int:
        column = self.solution_columns[0]
        if self.layout == "steps":
            if not isinstance(solution, list) or not all(isinstance(s, str) for s in solution):
                raise ValueError(f"solution row {index}: {column!r} must be a list of step strings")
            return len(solution) if join_steps(solution, self.delimiter).strip() else 0
        if not isinstance(solution, str):
            raise ValueError(f"solution row {index}: {column!r} must be a string, got {solution!r}")
        return len(step_spans(solution, self.delimiter))

    def load(self, indices: list[int]) -> list[_Solution]:
        batch = self.rows[indices]
        return [
            self._solution(i, {key: values[k] for key, values in batch.items()})
            for k, i in enumerate(indices)
        ]

    def _solution(self, index: int, row: dict) -> _Solution:
        prompt, delimiter = self.prompts[index], self.delimiter
        common = {"index": index, "prompt": prompt, "question": row["question"], "answer": str(row["answer"])}
        if self.layout == "steps":
            steps = list(row["completions"])
            texts = [join_steps(steps[: t + 1], delimiter) + delimiter for t in range(len(steps) - 1)]
            return _Solution(**common, steps=steps, prefixes=texts, prefix_texts=texts,
                             text=join_steps(steps, delimiter))  # fmt: skip
        text = row["completion"]
        steps = clean_steps(text, delimiter)
        if self.layout == "text":
            pieces = split_steps(text, delimiter)
            texts = ["".join(pieces[: t + 1]) for t in range(len(pieces) - 1)]
            return _Solution(**common, steps=steps, prefixes=texts, prefix_texts=texts, text=text)
        if "prompt" in row and row["prompt"] != prompt:
            raise ValueError(
                f"solution row {index}: its 'prompt' is not format_prompt(engine.tokenizer, question); "
                "its token ids come from another tokenizer or chat template than the labelling engine's"
            )
        ids, ends = list(row["token_ids"]), list(row["step_ends"])
        if len(ends) != len(steps) or any(not 0 <= e < len(ids) for e in ends):
            raise ValueError(
                f"solution row {index}: 'step_ends' {ends} do not fit its {len(steps)} steps "
                f"and {len(ids)} token ids"
            )
        prefixes = [ids[: ends[t] + 1] for t in range(len(steps) - 1)]
        texts = [self.tokenizer.decode(p, skip_special_tokens=True) for p in prefixes]
        return _Solution(**common, steps=steps, prefixes=prefixes, prefix_texts=texts, text=text)


# -- the job ---------------------------------------------------------------------------------------
def label_steps(
    engine: RolloutEngine,
    solutions: Dataset,
    config: MCLabelConfig,
    reward_fn: RewardFn,
    shard_dir: str | Path | None = None,
    progress: bool = True,
) -> Dataset:
    """Math-Shepherd step labels for every solution (see the module docstring).

    ``solutions`` has ``question``, ``answer`` (gold) and either ``completion`` (text; a rollout
    dataset's ``token_ids`` + ``step_ends`` are used when present) or ``completions`` (clean step
    strings). Returns one row per labelled solution: ``prompt`` (the raw question), ``completions``
    (clean steps), ``labels`` (soft), ``hard_labels``, ``answer``, ``solution_reward`` and
    ``source_index`` (row in ``solutions``). Solutions without a step are skipped with a warning.
    """
    source = _Solutions(solutions, engine)
    labelled = [i for i, count in enumerate(source.step_counts) if count > 0]
    if len(labelled) < len(solutions):
        logger.warning("skipped %d of %d solutions with no step to label", len(solutions) - len(labelled),
                       len(solutions))  # fmt: skip
    if not labelled:
        raise ValueError(f"none of the {len(solutions)} solutions has a step to label")
    offsets = prefix_seed_offsets([source.step_counts[i] - 1 for i in labelled])
    shards = None
    if shard_dir is not None:
        inputs = {"job": "mc-step-labels", "solutions_sha256": source.digest, "rows": len(solutions),
                  "layout": source.layout, "config": asdict(config), **job_fingerprint(engine, reward_fn)}  # fmt: skip
        shards = ShardStore(shard_dir, inputs, job="MC step-label")

    def label(number: int, start: int, stop: int) -> Dataset:
        seed = config.seed + offsets[start] * config.num_rollouts
        return _label_batch(engine, source.load(labelled[start:stop]), config, reward_fn, seed)

    return run_in_shards(
        len(labelled), config.batch_size, label, shards, "MC step labels", "solution", progress
    )


def count_correct_continuations(
    engine: RolloutEngine,
    prompts: Sequence[PromptLike],
    prefixes: Sequence[PromptLike],
    prefix_texts: Sequence[str],
    golds: Sequence[str],
    config: MCLabelConfig,
    reward_fn: RewardFn,
    seed: int,
    also_verify: Sequence[tuple[str, str]] = (),
) -> tuple[list[int], list[float]]:
    """How many of ``config.num_rollouts`` continuations of each prompt + prefix reach a correct answer.

    All prefixes go in one engine call (``n`` continuations each, prefix-shared); continuation ``k`` of
    prefix ``j`` is asked for with seed ``seed + j * n + k``. Each text verified is ``prefix_texts[j]``
    plus the continuation. ``also_verify`` holds ``(text, gold)`` pairs verified in the same call, whose
    rewards come back second. Shared by the step labels here and DAPO's candidate values.
    """
    n = config.num_rollouts
    groups = engine.continue_from(list(prompts), list(prefixes), config.sampling(seed)) if prefixes else []
    if len(groups) != len(prefixes) or any(len(group) != n for group in groups):
        raise RuntimeError(f"engine returned {[len(g) for g in groups]} continuations for {len(prefixes)} "
                           f"prefixes x {n}")  # fmt: skip
    texts = [head + c.text for head, group in zip(prefix_texts, groups, strict=True) for c in group]
    answers = [gold for gold in golds for _ in range(n)]
    texts += [text for text, _ in also_verify]
    answers += [gold for _, gold in also_verify]
    rewards = verify(reward_fn, texts, answers)
    correct = [float(r) >= config.correct_threshold for r in rewards]
    counts = [sum(correct[j * n : (j + 1) * n]) for j in range(len(prefixes))]
    return counts, [float(r) for r in rewards[len(prefixes) * n :]]


def _label_batch(
    engine: RolloutEngine, batch: list[_Solution], config: MCLabelConfig, reward_fn: RewardFn, seed: int
) -> Dataset:
    counts_of_all, outcomes = count_correct_continuations(
        engine,
        [s.prompt for s in batch for _ in s.prefixes],
        [p for s in batch for p in s.prefixes],
        [t for s in batch for t in s.prefix_texts],
        [s.answer for s in batch for _ in s.prefixes],
        config,
        reward_fn,
        seed,
        also_verify=[(s.text, s.answer) for s in batch],  # the whole solutions, in the same call
    )
    records: dict[str, list] = {key: [] for key in LABEL_FEATURES}
    first = 0
    for solution, outcome in zip(batch, outcomes, strict=True):
        counts = counts_of_all[first : first + len(solution.prefixes)]
        first += len(solution.prefixes)
        soft, hard = mc_step_labels(counts, config.num_rollouts, float(outcome) >= config.correct_threshold)
        values = (
            solution.question,
            solution.steps,
            soft,
            hard,
            solution.answer,
            float(outcome),
            solution.index,
        )
        for key, value in zip(LABEL_FEATURES, values, strict=True):
            records[key].append(value)
    return Dataset.from_dict(records, features=LABEL_FEATURES)
