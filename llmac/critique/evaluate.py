"""``llmac critique refine`` and ``llmac critique eval``: the critic at test time, on held-out problems.

Both sample ``samples_per_problem`` actor solutions per held-out problem (the first greedy, the others
at ``solution_temperature``; all greedy when the temperature is 0) and run the critique -> refine loop
(:func:`llmac.critique.refine.critique_and_refine`, :class:`~llmac.critique.refine.RefineConfig`'s
rounds and mode) on every solution.

- ``refine`` writes every turn to ``<output_dir>/turns`` (a datasets folder, :data:`TURN_COLUMNS`) and
  the accuracy before and after refinement of the greedy solutions, and the majority vote over the
  solutions before and after refinement, to ``<output_dir>/metrics.json``.
- ``eval`` adds how well the first critique judges: Acc@Dis (all, on right and on wrong solutions),
  first-error F1 against the arithmetic oracle (ProcessBench's; arithmetic tasks only), and best-of-N
  by verdict against the majority vote, a random sample and the sampler's own confidence (the sample
  of highest mean token log-prob).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from llmac.config import option, parse_config
from llmac.critique.format import CritiqueVerdicts, get_critique_format
from llmac.critique.metrics import (
    best_of_n_by_verdict,
    discrimination_metrics,
    first_error_f1,
    majority_of_accepted,
    refine_metrics,
)
from llmac.critique.oracle import judge_solution
from llmac.critique.refine import RefineConfig, critique_and_refine
from llmac.critique.step_critic_baseline import step_critic_summary
from llmac.critique.verdict_confidence import verdict_probabilities
from llmac.data.loading import DataError, format_prompt
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import EngineConfig, SamplingConfig, build_engine
from llmac.evaluation import majority_at_k
from llmac.files import write_text_atomically
from llmac.outputs import check_output, claim_output, overwrite_field, write_marker
from llmac.rewards import answer_keys
from llmac.rewards.registry import get_reward_fn
from llmac.rollouts import save_dataset_atomically
from llmac.steps import clean_steps
from llmac.validation import check_fields, require

logger = logging.getLogger(__name__)


@dataclass
class CritiqueEvalConfig:
    """Which actor and critic, and how many held-out solutions they work on."""

    actor: str = option("", "The actor (a saved model folder): it answers and refines.")
    critic: str = option("", "The critic (a saved model folder): `llmac critique sft` or `train` output.")
    output_dir: str = option("runs/critique/eval", "Where metrics.json (and, for refine, turns/) go.")
    samples_per_problem: int = option(
        8, "Actor solutions per held-out problem (N of best-of-N and of the majority vote).", range="[1, inf)"
    )
    solution_temperature: float = option(1.0, "Temperature of solutions 2..N.", range="[0, inf)")
    solution_max_new_tokens: int = option(96, "Tokens per solution at most.", range="[1, inf)")
    answer_reward: str = option("math", "What judges the answers: a reward name or 'module:function'.")
    step_critic: str | None = option(
        None,
        "eval: also judge the same solutions with this step critic (`llmac critic train` output): "
        "Acc@Dis, first-error F1 and best-of-N by its least step value.",
    )
    overwrite: bool = overwrite_field()

    def __post_init__(self) -> None:
        check_fields(self)
        require(self, bool(self.actor) and bool(self.critic), "give both --actor and --critic model folders")


@dataclass
class Solutions:
    """N actor solutions per problem, laid out problem after problem."""

    questions: list[str]
    answers: list[str]
    texts: list[str]
    mean_logprobs: list[float]
    n: int


def sample_solutions(actor, rows, config: CritiqueEvalConfig, seed: int) -> Solutions:
    """The first solution of each problem greedy, the other N - 1 at ``solution_temperature``."""
    questions, answers = list(rows["question"]), [str(a) for a in rows["answer"]]
    prompts = [format_prompt(actor.tokenizer, q) for q in questions]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=config.solution_max_new_tokens)
    groups = [[g[0]] for g in actor.generate(prompts, greedy)]
    if config.samples_per_problem > 1:
        sampled = SamplingConfig(
            n=config.samples_per_problem - 1,
            temperature=config.solution_temperature,
            max_new_tokens=config.solution_max_new_tokens,
            seed=seed,
        )
        groups = [g + more for g, more in zip(groups, actor.generate(prompts, sampled), strict=True)]
    n = config.samples_per_problem
    return Solutions(
        questions=[q for q in questions for _ in range(n)],
        answers=[a for a in answers for _ in range(n)],
        texts=[c.text for g in groups for c in g],
        mean_logprobs=[float(np.mean(c.logprobs)) if c.logprobs else 0.0 for g in groups for c in g],
        n=n,
    )


def _grouped(values: Sequence, n: int) -> list[list]:
    return [list(values[i : i + n]) for i in range(0, len(values), n)]


def refine_summary(turns, n: int) -> dict:
    """Accuracy before and after refinement (greedy solutions; every solution) and majority votes."""
    last = {}
    for row in turns:
        last[(row["problem_index"], row["sample_index"])] = row
    first = [row for row in turns if row["round"] == 0]
    before = [bool(r["correct"]) for r in first]
    after = [bool(last[(r["problem_index"], r["sample_index"])]["refined_correct"]) for r in first]
    finals = [last[(r["problem_index"], r["sample_index"])]["refined_solution"] for r in first]
    greedy = slice(0, None, n)
    result = {
        "greedy": asdict(refine_metrics(before[greedy], after[greedy])),
        "all_samples": asdict(refine_metrics(before, after)),
        "rounds_used": max(r["round"] for r in turns) + 1,
    }
    if n > 1:
        originals = [r["solution"] for r in first]
        result["majority_before"] = majority_at_k(
            _grouped([float(c) for c in before], n), _grouped(answer_keys(originals), n)
        )
        result["majority_after_refine"] = majority_at_k(
            _grouped([float(c) for c in after], n), _grouped(answer_keys(finals), n)
        )
    return result


def oracle_first_errors(solutions: Solutions) -> list[int] | str:
    """The arithmetic oracle's first wrong step of every solution (-1: none), or why there is none."""
    try:
        return [
            judge_solution(q, s, a).first_error
            for q, s, a in zip(solutions.questions, solutions.texts, solutions.answers, strict=True)
        ]
    except (DataError, ValueError) as error:  # not the arithmetic task
        return str(error)


def judge_summary(
    turns, solutions: Solutions, verdict_probability: Sequence[float | None] | None = None
) -> dict:
    """How the first critique of each solution judges it (module docstring); ``verdict_probability``
    (the critic's P(correct) at its final verdict, per first critique) adds best-of-N by it."""
    first = [row for row in turns if row["round"] == 0]
    correct = [bool(r["correct"]) for r in first]
    verdicts = [
        CritiqueVerdicts(
            tuple(r["step_verdicts"]), bool(r["verdict"]), r["verdict"] is not None, r["num_malformed"]
        )
        for r in first
    ]
    result = {
        "discrimination": asdict(discrimination_metrics([r["verdict"] for r in first], correct)),
        "malformed_fraction": float(np.mean([r["num_malformed"] > 0 for r in first])),
    }
    true_first = oracle_first_errors(solutions)
    try:
        if isinstance(true_first, str):
            raise ValueError(true_first)
        result["first_error"] = first_error_f1([v.first_flagged for v in verdicts], true_first)
    except ValueError as error:  # not the arithmetic task, or one kind of solution missing
        result["first_error"] = f"not measured: {error}"
    n = solutions.n
    if n > 1:
        groups_correct = _grouped(correct, n)
        keys = _grouped(answer_keys(solutions.texts), n)
        confidence = _grouped(solutions.mean_logprobs, n)
        result["best_of_n"] = {
            "n": n,
            "by_verdict": best_of_n_by_verdict(_grouped(verdicts, n), groups_correct),
            "by_verdict_then_confidence": best_of_n_by_verdict(
                _grouped(verdicts, n), groups_correct, confidence
            ),
            **(
                {"by_verdict_probability": best_by_score(groups_correct, _grouped(verdict_probability, n))}
                if verdict_probability is not None
                else {}
            ),  # fmt: skip
            "majority_of_accepted": majority_of_accepted(_grouped(verdicts, n), groups_correct, keys),
            "majority": majority_at_k([[float(c) for c in g] for g in groups_correct], keys),
            "random": float(np.mean(correct)),
            "sampler_confidence": float(
                np.mean([g[int(np.argmax(c))] for g, c in zip(groups_correct, confidence, strict=True)])
            ),
            "pass_at_n": float(np.mean([any(g) for g in groups_correct])),
        }
    return result


def best_by_score(
    groups_correct: Sequence[Sequence[bool]], groups_scores: Sequence[Sequence[float | None]]
) -> float:
    """Fraction of problems whose highest-scored solution is right (no score ranks lowest; ties: first)."""
    picks = [
        max(range(len(s)), key=lambda i, s=s: -math.inf if s[i] is None else s[i]) for s in groups_scores
    ]
    return float(np.mean([g[i] for g, i in zip(groups_correct, picks, strict=True)]))


def critic_verdict_probabilities(
    critic: str, refine: RefineConfig, delimiter: str, turns: list[dict]
) -> list:
    """The critic's P(correct) at the final verdict of each turn's critique (soft verdicts)."""
    from llmac.models import load_actor, load_tokenizer

    fmt = get_critique_format(refine.critique_format)
    tokenizer = load_tokenizer(critic)
    prompts = [
        format_prompt(tokenizer, fmt.prompt(r["question"], clean_steps(r["solution"], delimiter)))
        for r in turns
    ]
    model = load_actor(critic, "float32").eval()
    return verdict_probabilities(model, tokenizer, fmt, prompts, [r["critique"] for r in turns])


def run_critique_eval(
    config: CritiqueEvalConfig,
    refine: RefineConfig,
    task: TaskConfig,
    engine_config: EngineConfig,
    judge: bool = True,
    save_turns: bool = False,
) -> dict:
    """Sample, critique and refine the held-out solutions; write and return the metrics."""
    command = "critique refine" if save_turns else "critique eval"
    check_output(config.output_dir, command, overwrite=config.overwrite,
                 sources=[config.actor, config.critic, *filter(None, [config.step_critic])])  # fmt: skip
    rows = load_task(task, "eval")
    reward_fn = get_reward_fn(config.answer_reward)
    with (
        build_engine(config.actor, engine_config) as actor,
        build_engine(config.critic, engine_config) as critic,
    ):
        solutions = sample_solutions(actor, rows, config, refine.seed)
        turns = critique_and_refine(
            actor, critic, solutions.questions, solutions.texts, refine, solutions.answers, reward_fn
        )
    metrics = {
        "problems": len(rows),
        "samples_per_problem": solutions.n,
        "refine": refine_summary(turns, solutions.n),
    }
    if judge:
        first = [row for row in turns if row["round"] == 0]
        probability = critic_verdict_probabilities(config.critic, refine, engine_config.delimiter, first)
        metrics.update(judge_summary(turns, solutions, probability))
    if judge and config.step_critic:
        correct = [bool(r["correct"]) for r in turns if r["round"] == 0]
        true_first = oracle_first_errors(solutions)
        metrics["step_critic"] = step_critic_summary(
            config.step_critic, solutions.questions, solutions.texts, correct, solutions.n,
            None if isinstance(true_first, str) else true_first,
        )  # fmt: skip
    out = claim_output(config.output_dir, command)
    if save_turns:
        save_dataset_atomically(turns, out / "turns", command, overwrite=True)
    write_text_atomically(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_marker(out, command, complete=True)
    return metrics


CONFIG_CLASSES = (CritiqueEvalConfig, RefineConfig, TaskConfig, EngineConfig)


def _main(argv: Sequence[str] | None, command: str, judge: bool, save_turns: bool) -> dict:
    config, refine, task, engine_config = parse_config(CONFIG_CLASSES, argv, prog=f"llmac critique {command}")
    metrics = run_critique_eval(config, refine, task, engine_config, judge=judge, save_turns=save_turns)
    print(json.dumps(metrics, indent=2))
    return metrics


def refine_main(argv: Sequence[str] | None = None) -> dict:
    return _main(argv, "refine", judge=False, save_turns=True)


def eval_main(argv: Sequence[str] | None = None) -> dict:
    return _main(argv, "eval", judge=True, save_turns=False)
