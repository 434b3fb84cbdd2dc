"""Critique -> refine: the critic judges each solution, the actor refines the ones it rejects, for rounds.

Every round is two batched engine calls: the critic critiques every solution still open, then the
actor refines every rejected one. Two refine modes:

- ``"regenerate"`` keeps the steps before the first flagged step and lets the actor continue from
  there (``continue_from``): no instruction following needed, works for any model, the tiny one too.
  A critique that flags no step but rejects the final answer regenerates the last step.
- ``"rewrite"`` asks the actor for a new solution following the critique (:attr:`RefineConfig.rewrite_template`),
  for instruction-tuned models.

A solution the critic accepts (final verdict Correct, no step flagged) is kept and leaves the loop.
Each turn (one critique of one solution, and its refinement if any) is a row of the returned
dataset; see :data:`TURN_COLUMNS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from datasets import Dataset

from llmac.config import option
from llmac.critique.format import CritiqueVerdicts, get_critique_format
from llmac.data.loading import format_prompt
from llmac.engines.base import RolloutEngine, SamplingConfig
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn
from llmac.steps import clean_steps
from llmac.validation import check_fields

DEFAULT_REWRITE_TEMPLATE = (
    "Question: {question}\n\nA previous solution:\n{solution}\n\nA critique of it:\n{critique}\n\n"
    "Write a corrected step-by-step solution that follows the critique, ending with 'Answer: <number>'."
)

TURN_COLUMNS = (
    "problem_index",  # which problem (position in the input lists)
    "sample_index",  # which of that problem's solutions (0.. for each problem, in input order)
    "round",  # 0 for the first critique
    "question",
    "answer",  # gold answer ("" when none was given)
    "solution",  # the solution the critic judged
    "critique",
    "verdict",  # final verdict: True (Correct), False (Wrong), None (missing)
    "step_verdicts",  # one bool per step of `solution` (missing verdicts are False)
    "first_flagged",  # first step judged wrong, -1 if none
    "num_malformed",  # verdicts missing or unreadable in the critique
    "refined",  # whether the actor refined the solution in this turn
    "refined_solution",  # the solution after this turn (the same one when not refined)
    "correct",  # reward of `solution` > 0 (None without a reward function)
    "refined_correct",  # reward of `refined_solution` > 0 (None without a reward function)
)


@dataclass
class RefineConfig:
    """How the critique -> refine loop runs."""

    mode: str = option(
        "regenerate",
        "'regenerate': keep the steps before the first flagged one and continue from there (any model); "
        "'rewrite': a new solution following the critique through `rewrite_template` (instruction-tuned).",
        choices=("regenerate", "rewrite"),
    )
    rounds: int = option(1, "Critique -> refine rounds at most.", range="[1, inf)")
    critique_format: str = option("compact", "Critique layout: 'compact' or 'verbose'.")
    critique_temperature: float = option(0.0, "Critic sampling temperature (0 = greedy).", range="[0, inf)")
    critique_max_new_tokens: int = option(256, "Tokens per critique at most.", range="[1, inf)")
    refine_temperature: float = option(
        1.0,
        "Actor sampling temperature when refining. In 'regenerate' mode greedy decoding (0) from the same "
        "prefix repeats the flagged step; 'rewrite' with an instruction-tuned actor may use 0.",
        range="[0, inf)",
    )
    refine_max_new_tokens: int = option(256, "Tokens per refinement at most.", range="[1, inf)")
    rewrite_template: str = option(
        DEFAULT_REWRITE_TEMPLATE,
        "mode=rewrite: the refine request, with {question}, {solution} and {critique}.",
    )
    seed: int = option(0, "Sampling seed; round r uses seed + r.", range="[0, inf)")

    def __post_init__(self) -> None:
        check_fields(self)
        get_critique_format(self.critique_format)


def regenerate_prefix(steps: Sequence[str], verdicts: CritiqueVerdicts, delimiter: str = "\n") -> str:
    """The text the actor continues from: the steps before the first flagged one (before the last step
    when none is flagged), each followed by the delimiter; empty when the first step is flagged."""
    keep = verdicts.first_flagged if verdicts.first_flagged != -1 else max(len(steps) - 1, 0)
    return "".join(step + delimiter for step in steps[:keep])


def _accepted(verdicts: CritiqueVerdicts) -> bool:
    return verdicts.final_found and verdicts.final and verdicts.first_flagged == -1


def critique_and_refine(
    actor: RolloutEngine,
    critic: RolloutEngine,
    questions: Sequence[str],
    solutions: Sequence[str],
    config: RefineConfig,
    answers: Sequence[str] | None = None,
    reward_fn: RewardFn | None = None,
) -> Dataset:
    """Run the loop on ``solutions[i]`` (an answer of ``questions[i]``); one row per turn (:data:`TURN_COLUMNS`).

    Several solutions of one problem are given as repeated questions; they get sample indices
    0, 1, ... in order. ``reward_fn`` with ``answers`` fills the ``correct`` columns.
    """
    if len(questions) != len(solutions):
        raise ValueError(f"critique_and_refine: {len(questions)} questions but {len(solutions)} solutions")
    if reward_fn is not None and (answers is None or len(answers) != len(questions)):
        raise ValueError("critique_and_refine: a reward function needs one gold answer per question")
    fmt = get_critique_format(config.critique_format)
    problem_index, sample_index = _indices(questions)
    golds = [str(a) for a in answers] if answers is not None else [""] * len(questions)

    current = list(solutions)
    open_items = list(range(len(questions)))
    rows: dict[str, list] = {column: [] for column in TURN_COLUMNS}
    for round_index in range(config.rounds):
        if not open_items:
            break
        seed = config.seed + round_index
        steps = [clean_steps(current[i], critic.delimiter) for i in open_items]
        critic_prompts = [
            format_prompt(critic.tokenizer, fmt.prompt(questions[i], item_steps))
            for i, item_steps in zip(open_items, steps, strict=True)
        ]
        critique_sampling = SamplingConfig(
            temperature=config.critique_temperature, max_new_tokens=config.critique_max_new_tokens, seed=seed
        )
        critiques = [group[0].text for group in critic.generate(critic_prompts, critique_sampling)]
        verdicts = [fmt.parse(c, len(s)) for c, s in zip(critiques, steps, strict=True)]

        rejected = [k for k, v in enumerate(verdicts) if not _accepted(v)]
        requests = [
            RefineRequest(
                questions[open_items[k]], current[open_items[k]], steps[k], critiques[k], verdicts[k]
            )
            for k in rejected
        ]
        refined = dict(zip(rejected, refine_solutions(actor, requests, config, seed), strict=True))
        before = [current[i] for i in open_items]
        after = [refined.get(k, before[k]) for k in range(len(open_items))]
        item_golds = [golds[i] for i in open_items]
        correct_before = _correct(reward_fn, before, item_golds)
        correct_after = _correct(reward_fn, after, item_golds)
        for k, i in enumerate(open_items):
            v = verdicts[k]
            turn = {
                "problem_index": problem_index[i],
                "sample_index": sample_index[i],
                "round": round_index,
                "question": questions[i],
                "answer": golds[i],
                "solution": before[k],
                "critique": critiques[k],
                "verdict": v.final if v.final_found else None,
                "step_verdicts": list(v.steps),
                "first_flagged": v.first_flagged,
                "num_malformed": v.num_malformed,
                "refined": k in refined,
                "refined_solution": after[k],
                "correct": correct_before[k],
                "refined_correct": correct_after[k],
            }
            for column in TURN_COLUMNS:
                rows[column].append(turn[column])
            current[i] = after[k]
        open_items = [open_items[k] for k in rejected]
    return Dataset.from_dict(rows)


def _indices(questions: Sequence[str]) -> tuple[list[int], list[int]]:
    """Problem index (by first appearance of the question) and sample index within the problem."""
    problems: dict[str, int] = {}
    counts: dict[int, int] = {}
    problem_index, sample_index = [], []
    for question in questions:
        p = problems.setdefault(question, len(problems))
        sample_index.append(counts.get(p, 0))
        counts[p] = sample_index[-1] + 1
        problem_index.append(p)
    return problem_index, sample_index


@dataclass(frozen=True)
class RefineRequest:
    """A solution the critic rejected, with what the refinement needs."""

    question: str
    solution: str
    steps: list[str]
    critique: str
    verdicts: CritiqueVerdicts


def refine_solutions(
    actor: RolloutEngine, requests: Sequence[RefineRequest], config: RefineConfig, seed: int = 0
) -> list[str]:
    """The actor's refined solution for each request, in one batched engine call."""
    if not requests:
        return []
    sampling = SamplingConfig(
        temperature=config.refine_temperature, max_new_tokens=config.refine_max_new_tokens, seed=seed
    )
    if config.mode == "regenerate":
        prompts = [format_prompt(actor.tokenizer, r.question) for r in requests]
        prefixes = [regenerate_prefix(r.steps, r.verdicts, actor.delimiter) for r in requests]
        groups = actor.continue_from(prompts, prefixes, sampling)
        return [prefix + group[0].text for prefix, group in zip(prefixes, groups, strict=True)]
    asks = [
        config.rewrite_template.format(question=r.question, solution=r.solution, critique=r.critique)
        for r in requests
    ]
    groups = actor.generate([format_prompt(actor.tokenizer, ask) for ask in asks], sampling)
    return [group[0].text for group in groups]


def _correct(reward_fn: RewardFn | None, texts: list[str], golds: list[str]) -> list[bool | None]:
    if reward_fn is None:
        return [None] * len(texts)
    return [r > 0 for r in verify(reward_fn, texts, golds)]


def final_solutions(turns: Dataset) -> list[tuple[int, int, str]]:
    """``(problem_index, sample_index, solution)`` after the last turn of each solution, in input order."""
    return [
        (row["problem_index"], row["sample_index"], row["refined_solution"]) for row in _last_turns(turns)
    ]


def final_correct_groups(turns: Dataset) -> tuple[list[list[bool | None]], list[list[bool | None]]]:
    """Per problem, the correctness of each of its solutions before the loop and after its last turn:
    the inputs of :func:`llmac.evaluation.majority_at_k` over refined samples (with their answer keys)
    and of :func:`llmac.critique.metrics.refine_metrics` (flattened)."""
    before: dict[int, list] = {}
    after: dict[int, list] = {}
    first = {(r["problem_index"], r["sample_index"]): r["correct"] for r in turns if r["round"] == 0}
    for row in _last_turns(turns):
        key = (row["problem_index"], row["sample_index"])
        before.setdefault(key[0], []).append(first[key])
        after.setdefault(key[0], []).append(row["refined_correct"])
    return [before[p] for p in sorted(before)], [after[p] for p in sorted(after)]


def _last_turns(turns: Dataset) -> list[dict]:
    """The last turn of each (problem, sample), ordered by problem then sample."""
    last: dict[tuple[int, int], dict] = {}
    for row in turns:
        last[(row["problem_index"], row["sample_index"])] = row
    return [last[key] for key in sorted(last)]
