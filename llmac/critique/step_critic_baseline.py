"""The step critic judged like a generative critic, on the very solutions ``llmac critique eval`` samples.

A step critic gives each step a value; read as a verdict, a solution is accepted when its least valued
step reaches ``threshold``, and its first flagged step is the first below it (the rule of
:func:`llmac.critic.metrics.first_error_index`). Best-of-N picks the solution of highest least step
value (:func:`llmac.critic.metrics.best_of_n`, ``how="min"``), and the threshold-free solution AUC says
how well the least step value ranks right above wrong answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from llmac.critic.metrics import best_of_n, first_error_index, roc_auc, solution_score
from llmac.critic.model import critic_delimiter, load_critic, load_critic_tokenizer
from llmac.critic.scoring import score_steps
from llmac.critique.metrics import discrimination_metrics, first_error_f1


def step_critic_summary(
    critic_path: str,
    questions: Sequence[str],
    texts: Sequence[str],
    correct: Sequence[bool],
    n: int,
    true_first_errors: Sequence[int] | None,
    threshold: float = 0.5,
) -> dict:
    """Acc@Dis, first-error F1, solution AUC and best-of-``n`` of the step critic at ``critic_path``."""
    model, tokenizer = load_critic(critic_path), load_critic_tokenizer(critic_path)
    values = score_steps(model, tokenizer, list(questions), list(texts), critic_delimiter(model))
    values = [v or [0.0] for v in values]  # an empty solution has no step to trust
    lowest = [solution_score(v, "min") for v in values]
    result = {
        "threshold": threshold,
        "discrimination": asdict(discrimination_metrics([low >= threshold for low in lowest], list(correct))),
        "solution_auc": roc_auc(lowest, list(correct)) if 0 < sum(correct) < len(correct) else None,
    }
    if true_first_errors is not None:
        result["first_error"] = first_error_f1([first_error_index(v, threshold) for v in values],
                                               list(true_first_errors))  # fmt: skip
    if n > 1:
        groups = range(0, len(values), n)
        result["best_of_n"] = best_of_n([values[g : g + n] for g in groups],
                                        [[float(c) for c in correct[g : g + n]] for g in groups])  # fmt: skip
    return result
