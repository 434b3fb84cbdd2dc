"""How good is a step critic? Three measurements, each on a dataset llmac writes.

- step AUC and first-error identification (ProcessBench-style F1) against Monte-Carlo labels
  (the labelled layout of :mod:`llmac.critic.labelling`);
- best-of-N selection accuracy on rollouts (``llmac generate`` with n samples per question): the
  critic's pick (min over steps, and last step) against majority vote, a random pick, pass@N and
  the sampler's own confidence (a critic worth running should beat it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from llmac.critic.metrics import (
    best_of_n,
    first_error_from_labels,
    first_error_index,
    process_bench_f1,
    random_pick_accuracy,
    step_auc,
)
from llmac.critic.scoring import score_steps
from llmac.evaluation import majority_at_k, pass_at_k
from llmac.rollouts import group_rows

logger = logging.getLogger(__name__)


def _require(dataset: Dataset, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {dataset.column_names}")


@dataclass
class LabelMetrics:
    """The critic against MC labels of held-out solutions."""

    num_solutions: int
    num_steps: int
    step_auc: float
    first_error_f1: float
    first_error_acc_erroneous: float
    first_error_acc_correct: float


@dataclass
class SelectionMetrics:
    """Best-of-N accuracy: the critic's pick against the obvious alternatives."""

    num_questions: int
    n: int
    critic_min: float
    critic_last: float
    majority: float
    random: float
    pass_at_n: float
    # The pick whose least likely token was most likely under the sampler (the rollouts' `logprobs`):
    # a critic-free baseline; None when the rollouts carry no log-probs.
    sampler_confidence: float | None = None

    @property
    def gain_over_random(self) -> float:
        return self.critic_min - self.random


def evaluate_on_labels(
    model, tokenizer, labelled: Dataset, delimiter: str, threshold: float = 0.5, batch_size: int = 32
) -> LabelMetrics:
    """Step AUC (labels thresholded at ``threshold``) and ProcessBench-style first-error F1.

    A solution's true first error is its first step from which no MC completion succeeded (hard label
    0); the critic's is its first step valued below ``threshold``.
    A metric the labels cannot define (AUC with one class of steps, F1 without both erroneous and
    error-free solutions, as from a weak actor) is NaN, with a warning, rather than ending the job.
    """
    _require(labelled, ["prompt", "completions", "labels", "hard_labels"], "labelled dataset")
    values = score_steps(
        model, tokenizer, list(labelled["prompt"]), list(labelled["completions"]), delimiter, batch_size
    )
    positives = [label >= threshold for labels in labelled["labels"] for label in labels]
    auc = (
        step_auc(values, list(labelled["labels"]), threshold)
        if 0 < sum(positives) < len(positives)
        else _undefined("step AUC", f"{sum(positives)} of {len(positives)} steps are labelled >= {threshold}")
    )
    true_first = [first_error_from_labels(h) for h in labelled["hard_labels"]]
    erroneous = sum(index != -1 for index in true_first)
    f1 = (
        process_bench_f1([first_error_index(v, threshold) for v in values], true_first)
        if 0 < erroneous < len(true_first)
        else dict.fromkeys(("f1", "acc_erroneous", "acc_correct"), _undefined(
            "first-error F1", f"{erroneous} of {len(true_first)} solutions have an error"))
    )  # fmt: skip
    return LabelMetrics(
        num_solutions=len(values),
        num_steps=sum(len(v) for v in values),
        step_auc=auc,
        first_error_f1=f1["f1"],
        first_error_acc_erroneous=f1["acc_erroneous"],
        first_error_acc_correct=f1["acc_correct"],
    )


def _undefined(metric: str, why: str) -> float:
    logger.warning("%s is undefined on these labels (%s): reported as NaN", metric, why)
    return math.nan


def solutions_of(data: Dataset) -> tuple[list[str], list]:
    """Questions and responses of a labelled (prompt, completions) or rollout (question, completion) dataset."""
    if {"prompt", "completions"} <= set(data.column_names):
        return list(data["prompt"]), list(data["completions"])
    if {"question", "completion"} <= set(data.column_names):
        return list(data["question"]), list(data["completion"])
    raise ValueError(
        "expected a labelled dataset (prompt, completions) or rollouts (question, completion); "
        f"got columns {data.column_names}"
    )


def score_dataset(model, tokenizer, data: Dataset, delimiter: str, batch_size: int = 32) -> list[list[float]]:
    """Per-step values of every solution in ``data``; an empty solution has none."""
    questions, responses = solutions_of(data)
    keep = [i for i, r in enumerate(responses) if (r if isinstance(r, str) else "".join(r)).strip()]
    values = score_steps(
        model, tokenizer, [questions[i] for i in keep], [responses[i] for i in keep], delimiter, batch_size
    )
    out: list[list[float]] = [[] for _ in responses]
    for i, v in zip(keep, values, strict=True):
        out[i] = v
    return out


def evaluate_selection(
    model, tokenizer, rollouts: Dataset, delimiter: str, answer_keys, batch_size: int = 32
) -> SelectionMetrics:
    """Best-of-N over each question's samples in ``rollouts`` (grouped by ``prompt_index``)."""
    _require(rollouts, ["prompt_index", "question", "completion", "reward"], "rollout dataset")
    values = score_dataset(model, tokenizer, rollouts, delimiter, batch_size)
    groups = group_rows(rollouts["prompt_index"])
    reward, key = list(rollouts["reward"]), answer_keys(list(rollouts["completion"]))
    rewards = [[reward[i] for i in g] for g in groups]
    # An empty completion has no step to score: it ranks below any scored one.
    group_values = [[values[i] or [0.0] for i in g] for g in groups]
    confidence = None
    if "logprobs" in rollouts.column_names:
        logprobs = list(rollouts["logprobs"])
        confidence = best_of_n([[logprobs[i] or [-math.inf] for i in g] for g in groups], rewards, "min")
    return SelectionMetrics(
        num_questions=len(groups),
        n=max(len(g) for g in groups),
        critic_min=best_of_n(group_values, rewards, "min"),
        critic_last=best_of_n(group_values, rewards, "last"),
        majority=majority_at_k(rewards, [[key[i] for i in g] for g in groups]),
        random=random_pick_accuracy(rewards),
        pass_at_n=pass_at_k(rewards),
        sampler_confidence=confidence,
    )
