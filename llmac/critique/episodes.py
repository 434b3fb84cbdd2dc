"""Critique-RL's episodes: the frozen actor answers, the critic writes k critiques of each answer, the
actor refines what a critique rejects (when the reward reads the refinement), and each critique gets
its reward. :class:`CritiqueEpisodes` plays the sampler's part for :class:`llmac.rl.loop.RunLoop`
(its ``engine`` is the critic's, which the loop syncs after every update).

One iteration (:meth:`CritiqueEpisodes.sample_batch`), on the main process:

1. ``prompts_per_iteration`` problems in a seeded order; one actor solution each (``actor_temperature``),
   judged by ``answer_reward`` against the gold answer (the oracle correctness);
2. the critique request of each solution (its steps in the critique format) and ``samples_per_prompt``
   critiques of it at ``temperature``, parsed into verdicts (malformed ones count as wrong);
3. if the reward reads the refinement: one refinement by the actor of each critique that rejects
   the solution (a critique that accepts it leaves it as it was), judged again;
4. each critique's reward (:mod:`llmac.critique.rewards`), the critique as a :class:`~llmac.rl.batch.Sample`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch.distributed as dist

from llmac.critique.config import CritiqueRLConfig, reads_refinement
from llmac.critique.data import balanced
from llmac.critique.format import CritiqueVerdicts, get_critique_format
from llmac.critique.metrics import discrimination_metrics, refine_metrics
from llmac.critique.refine import RefineConfig, RefineRequest, critique_and_refine, refine_solutions
from llmac.critique.rewards import CritiqueOutcome, critique_rewards
from llmac.data.loading import format_prompt
from llmac.engines.base import RolloutEngine, SamplingConfig
from llmac.rewards.checks import verify
from llmac.rewards.registry import RewardFn
from llmac.rl.batch import Sample
from llmac.rl.sampler import PromptOrder
from llmac.steps import clean_steps

logger = logging.getLogger(__name__)


@dataclass
class Problems:
    """Questions with their gold answers."""

    questions: list[str]
    answers: list[str]

    @classmethod
    def of(cls, rows, limit: int = 0) -> Problems:
        questions, answers = list(rows["question"]), [str(a) for a in rows["answer"]]
        if limit:
            questions, answers = questions[:limit], answers[:limit]
        return cls(questions, answers)


def accepted(verdicts: CritiqueVerdicts) -> bool:
    """A critique accepts a solution when its final verdict is Correct and it flags no step."""
    return verdicts.final_found and verdicts.final and verdicts.first_flagged == -1


class CritiqueEpisodes:
    """Critiques with rewards for each iteration, sampled on the main process and shared by all."""

    def __init__(
        self,
        config: CritiqueRLConfig,
        accelerator,
        critic: RolloutEngine | None,
        actor: RolloutEngine | None,
        train: Problems,
        held_out: Problems,
        answer_fn: RewardFn,
        critic_tokenizer,
        owns_engines: bool = True,
    ) -> None:
        self.config, self.accelerator = config, accelerator
        self.engine, self.actor = critic, actor  # `engine`: the one the loop syncs, the critic's
        self.train, self.held_out, self.answer_fn = train, held_out, answer_fn
        self.critic_tokenizer, self.owns_engines = critic_tokenizer, owns_engines
        self.format = get_critique_format(config.critique_format)
        self.refines = reads_refinement(config.reward_name)
        self.order = PromptOrder(len(train.questions), config.seed)
        self.completions = 0  # critiques sampled so far
        self._eval_solutions: list[str] | None = None

    # -- what the loop asks of a sampler -----------------------------------------------------------
    def state(self) -> dict:
        return {"prompt_cursor": self.order.cursor, "completions": self.completions}

    def load_state(self, state: dict) -> None:
        self.order.cursor, self.completions = state["prompt_cursor"], state["completions"]

    def wait(self) -> float:
        return 0.0  # no sampling ahead

    def close(self) -> None:
        if self.owns_engines:
            for engine in (self.engine, self.actor):
                if engine is not None:
                    engine.close()
            self.engine = self.actor = None

    def share(self, groups: list) -> list:
        """This process's share of ``groups``: every ``num_processes``-th."""
        return groups[self.accelerator.process_index :: self.accelerator.num_processes]

    def rollouts(self, number: int) -> tuple[list[list[Sample]], dict]:
        """Iteration ``number``'s groups of critiques (one group per solution), the same on every process."""
        payload = [None]
        if self.accelerator.is_main_process:
            payload = [self.sample_batch(number, self.order.cursor)]
        if self.accelerator.num_processes > 1:
            dist.broadcast_object_list(payload, src=0)
        groups, metrics, self.order.cursor = payload[0]
        self.completions += sum(len(g) for g in groups)
        return groups, {**metrics, "completions": self.completions}

    # -- one iteration -----------------------------------------------------------------------------
    def sample_batch(self, number: int, cursor: int) -> tuple[list[list[Sample]], dict, int]:
        config, k = self.config, self.config.samples_per_prompt
        order = PromptOrder(self.order.size, self.order.seed, cursor)
        indices = order.take(config.prompts_per_iteration)
        seed = config.seed * 1_000_000_007 + number * config.prompts_per_iteration * (k + 1)
        questions = [self.train.questions[i] for i in indices]
        golds = [self.train.answers[i] for i in indices]
        solutions = self.solve(questions, config.actor_temperature, seed)
        correct = self.judge(solutions, golds)

        steps = [clean_steps(s, self.actor.delimiter) for s in solutions]
        requests = [self.request_ids(q, s) for q, s in zip(questions, steps, strict=True)]
        kept = [j for j, ids in enumerate(requests) if len(ids) <= config.max_prompt_length]
        if config.balance_solutions:
            kept = balanced(kept, correct, seed) or kept  # one kind only: nothing to balance
        sampling = SamplingConfig(
            n=k,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=seed + len(indices),
        )
        groups = self.engine.generate([requests[j] for j in kept], sampling) if kept else []
        verdicts = [
            [self.format.parse(c.text, len(steps[j])) for c in group]
            for j, group in zip(kept, groups, strict=True)
        ]

        refined_correct: list[list[bool | None]] = [[None] * k for _ in kept]
        if self.refines:
            refined_correct = self.refine_outcomes(
                kept, questions, solutions, steps, golds, correct, groups, verdicts, seed
            )
        outcomes = [
            [
                CritiqueOutcome(correct[j], v.final if v.final_found else None, rc)
                for v, rc in zip(vs, rcs, strict=True)
            ]
            for j, vs, rcs in zip(kept, verdicts, refined_correct, strict=True)
        ]
        rewards = [critique_rewards(config.reward_name, group) for group in outcomes]
        samples = [
            [
                Sample(
                    indices[j],
                    list(requests[j]),
                    list(c.token_ids),
                    list(c.step_ends),
                    c.text,
                    c.finish_reason,
                    r,
                    list(c.logprobs),
                )
                for c, r in zip(group, rs, strict=True)
            ]
            for j, group, rs in zip(kept, groups, rewards, strict=True)
        ]
        metrics = self.batch_metrics(correct, [correct[j] for j in kept], outcomes, rewards, groups, verdicts)
        metrics["dropped_long_requests"] = len(indices) - len(kept)
        return samples, metrics, order.cursor

    def solve(self, questions: list[str], temperature: float, seed: int) -> list[str]:
        """One actor solution per question."""
        prompts = [format_prompt(self.actor.tokenizer, q) for q in questions]
        sampling = SamplingConfig(
            temperature=temperature, max_new_tokens=self.config.actor_max_new_tokens, seed=seed
        )
        return [group[0].text for group in self.actor.generate(prompts, sampling)]

    def judge(self, solutions: list[str], golds: list[str]) -> list[bool]:
        """The oracle correctness of each solution (``answer_reward`` > 0.5)."""
        return [r > 0.5 for r in verify(self.answer_fn, solutions, golds, self.config.answer_reward)]

    def request_ids(self, question: str, steps: list[str]) -> list[int]:
        """The chat-templated critique request as the critic's token ids."""
        text = format_prompt(self.critic_tokenizer, self.format.prompt(question, steps))
        return list(self.critic_tokenizer(text, add_special_tokens=False)["input_ids"])

    def refine_config(self) -> RefineConfig:
        config = self.config
        return RefineConfig(
            mode=config.refine_mode,
            critique_format=config.critique_format,
            refine_temperature=config.refine_temperature,
            refine_max_new_tokens=config.refine_max_new_tokens,
            seed=config.seed,
        )

    def refine_outcomes(self, kept, questions, solutions, steps, golds, correct, groups, verdicts, seed):
        """Per critique: whether the solution is correct after the actor follows it (greedy)."""
        out = [[correct[j]] * len(group) for j, group in zip(kept, groups, strict=True)]
        requests, where = [], []
        for g, (j, group) in enumerate(zip(kept, groups, strict=True)):
            for c, completion in enumerate(group):
                if not accepted(verdicts[g][c]):
                    requests.append(
                        RefineRequest(questions[j], solutions[j], steps[j], completion.text, verdicts[g][c])
                    )
                    where.append((g, c, golds[j]))
        refined = refine_solutions(self.actor, requests, self.refine_config(), seed)
        judged = self.judge(refined, [gold for _, _, gold in where]) if refined else []
        for (g, c, _), ok in zip(where, judged, strict=True):
            out[g][c] = ok
        return out

    def batch_metrics(self, correct_all, correct, outcomes, rewards, groups, verdicts) -> dict:
        flat = [o for group in outcomes for o in group]
        metrics = {
            "actor_accuracy": float(np.mean(correct_all)),
            "reward": float(np.mean([r for rs in rewards for r in rs])) if flat else 0.0,
            "critique_length": float(np.mean([len(c.token_ids) for g in groups for c in g])) if flat else 0.0,
            "truncated_fraction": float(np.mean([c.finish_reason == "length" for g in groups for c in g]))
            if flat
            else 0.0,
            "malformed_fraction": float(np.mean([v.num_malformed > 0 for vs in verdicts for v in vs]))
            if flat
            else 0.0,
        }
        if not flat:
            return metrics
        dis = discrimination_metrics([o.verdict for o in flat], [o.original_correct for o in flat])
        metrics.update(
            acc_dis=dis.acc_dis,
            acc_dis_correct=dis.acc_dis_correct if dis.acc_dis_correct is not None else float("nan"),
            acc_dis_wrong=dis.acc_dis_wrong if dis.acc_dis_wrong is not None else float("nan"),
        )
        if self.refines:
            changes = refine_metrics(
                [o.original_correct for o in flat], [bool(o.refined_correct) for o in flat]
            )
            metrics.update(
                acc_refine=changes.acc_refine,
                delta=changes.delta,
                c_to_i=changes.c_to_i,
                i_to_c=changes.i_to_c,
            )
        return metrics

    # -- held-out evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Greedy critiques of the actor's greedy held-out solutions: Acc@Dis (all, on right and on wrong
        solutions) and the accuracy after one refinement (main process; the others wait)."""
        result = {}
        if self.accelerator.is_main_process and self.engine is not None:
            result = self.evaluate_held_out()
        self.accelerator.wait_for_everyone()
        return result

    def evaluate_held_out(self) -> dict:
        held_out = self.held_out
        if self._eval_solutions is None:  # the actor is frozen: its greedy solutions never change
            self._eval_solutions = self.solve(held_out.questions, 0.0, self.config.seed)
        refine = RefineConfig(
            mode=self.config.refine_mode,
            critique_format=self.config.critique_format,
            critique_max_new_tokens=self.config.max_new_tokens,
            refine_temperature=self.config.refine_temperature,
            refine_max_new_tokens=self.config.refine_max_new_tokens,
            seed=self.config.seed,
        )
        turns = critique_and_refine(
            self.actor,
            self.engine,
            held_out.questions,
            self._eval_solutions,
            refine,
            held_out.answers,
            self.answer_fn,
        )
        dis = discrimination_metrics(turns["verdict"], turns["correct"])
        changes = refine_metrics(turns["correct"], turns["refined_correct"])
        nan = float("nan")
        return {
            "eval_acc_dis": dis.acc_dis,
            "eval_acc_dis_correct": nan if dis.acc_dis_correct is None else dis.acc_dis_correct,
            "eval_acc_dis_wrong": nan if dis.acc_dis_wrong is None else dis.acc_dis_wrong,
            "eval_malformed_fraction": float(np.mean([m > 0 for m in turns["num_malformed"]])),
            "eval_acc": changes.acc,
            "eval_acc_refine": changes.acc_refine,
            "eval_delta": changes.delta,
        }
