"""The step critic on real text: an outcome critic from SmolLM2 on GSM8K model solutions (a report, not CI).

``../shared/data/gsm8k/model_solutions.jsonl`` holds, per GSM8K test question, four solutions written
by GPT-3 6B/175B models (fine-tuned and verifier-selected) with ``is_correct`` labels. The first
``--train-questions`` questions' solutions train a critic initialised from ``--model`` (LoRA + value
head, ``llmac critic train`` with ``last_step_only``: BCE of the final step's value against
``is_correct``); the next ``--eval-questions`` questions are held out. Reported on them:

- solution AUC: the critic's final-step value (and its lowest step value) against ``is_correct``;
- best-of-4 by the critic against picking at random, majority vote over the four final answers, and
  pass@4 (the ceiling).

Lines are steps (the delimiter is a newline); the final line is ``A: <answer>``, the majority key.
Figures and the command go to ``bench/results/gsm8k_critic-<model>.json``.

    python bench/gsm8k_critic.py            # SmolLM2 from `make smollm2`; --quick: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from datasets import Dataset
from helpers.bench_actor import model_label
from helpers.results import BenchRecord, add_results_arg, summary_line

from llmac.config import ModelConfig
from llmac.critic.metrics import best_of_n, random_pick_accuracy, roc_auc, solution_score
from llmac.critic.model import load_critic, load_critic_tokenizer
from llmac.critic.scoring import score_steps
from llmac.critic.training import CriticConfig, CriticDataConfig, run_critic_training
from llmac.data.loading import DataError, format_prompt
from llmac.evaluation import majority_at_k, pass_at_k
from llmac.models import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
DELIMITER = "\n"


def default_model() -> Path:
    """SmolLM2-135M-Instruct where `make smollm2` imports it."""
    cache = Path(os.environ.get("LLMAC_CACHE") or Path.home() / ".cache" / "llmac")
    return cache / "smollm2" / "SmolLM2-135M-Instruct"


def default_solutions() -> Path:
    folder = os.environ.get("LLMAC_GSM8K_DIR") or REPO.parent / "shared" / "data" / "gsm8k"
    return Path(folder) / "model_solutions.jsonl"


def read_solutions(path: Path) -> list[dict]:
    """``[{"question", "solutions": [(steps, is_correct, answer key)] * 4}]``; a bad row stops the run
    before any work, naming its line and field."""
    questions = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        row = json.loads(line)
        if not isinstance(row.get("question"), str):
            raise DataError(f"{path}:{number}: field 'question' is missing or not text")
        solutions = []
        for source in SOURCES:
            entry = row.get(source)
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("solution"), str)
                or not isinstance(entry.get("is_correct"), bool)
            ):
                raise DataError(
                    f"{path}:{number}: field '{source}' needs a 'solution' text and a bool 'is_correct'"
                )
            steps = [s for s in entry["solution"].split(DELIMITER) if s.strip()]
            key = steps[-1].partition("A:")[2].strip() if steps and "A:" in steps[-1] else None
            solutions.append((steps, entry["is_correct"], key))
        questions.append({"question": row["question"], "solutions": solutions})
    return questions


def training_rows(questions: list[dict], tokenizer) -> Dataset:
    """The PRM layout ``llmac critic train`` reads; every step carries the outcome (only the last is used)."""
    rows = [
        {
            "prompt": format_prompt(tokenizer, q["question"]),
            "completions": steps,
            "labels": [float(correct)] * len(steps),
            "hard_labels": [int(correct)] * len(steps),
        }
        for q in questions
        for steps, correct, _ in q["solutions"]
        if steps
    ]
    return Dataset.from_list(rows)


def evaluate(critic_dir: Path, questions: list[dict], batch_size: int) -> dict:
    critic, tokenizer = load_critic(critic_dir).eval(), load_critic_tokenizer(critic_dir)
    prompts = [format_prompt(tokenizer, q["question"]) for q in questions for _ in q["solutions"]]
    responses = [steps or [""] for q in questions for steps, _, _ in q["solutions"]]
    values = score_steps(critic, tokenizer, prompts, responses, DELIMITER, batch_size, progress=True)
    correct = [c for q in questions for _, c, _ in q["solutions"]]
    n = len(SOURCES)
    groups = [values[i : i + n] for i in range(0, len(values), n)]
    rewards = [[float(c) for _, c, _ in q["solutions"]] for q in questions]
    keys = [[k for _, _, k in q["solutions"]] for q in questions]
    return {
        "eval_questions": len(questions),
        "eval_solutions": len(values),
        "share_correct": sum(correct) / len(correct),
        "auc_last_step": roc_auc([solution_score(v, "last") for v in values], correct),
        "auc_min_step": roc_auc([solution_score(v, "min") for v in values], correct),
        "best_of_4_last": best_of_n(groups, rewards, "last"),
        "best_of_4_min": best_of_n(groups, rewards, "min"),
        "majority_of_4": majority_at_k(rewards, keys),
        "random_of_4": random_pick_accuracy(rewards),
        "pass_at_4": pass_at_k(rewards),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=str(default_model()),
        help="A causal LM folder to initialise the critic from "
        "(default: SmolLM2-135M-Instruct from `make smollm2`).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="A smoke run: 4 + 4 questions, 2 training steps (under a minute).",
    )
    parser.add_argument("--solutions", type=Path, default=default_solutions(), help="model_solutions.jsonl")
    parser.add_argument("--train-questions", type=int, default=100)
    parser.add_argument("--eval-questions", type=int, default=120)
    parser.add_argument("--max-steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_gsm8k_critic")
    add_results_arg(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_questions, args.eval_questions, args.max_steps, args.batch_size = 4, 4, 2, 4
    if not Path(args.model).is_dir():
        sys.exit(
            f"{args.model}: no such model folder (`make smollm2` imports SmolLM2 there, or pass --model)"
        )
    record = BenchRecord(f"gsm8k_critic-{model_label(Path(args.model))}", args)

    questions = read_solutions(args.solutions)
    if args.train_questions + args.eval_questions > len(questions):
        sys.exit(
            f"{args.solutions}: {len(questions)} questions, fewer than --train-questions + --eval-questions"
        )
    train, held_out = questions[: args.train_questions], questions[-args.eval_questions :]
    train_dir, critic_dir = args.out / "train_rows", args.out / "critic"
    training_rows(train, load_tokenizer(args.model)).save_to_disk(str(train_dir))
    critic_args = CriticConfig(
        output_dir=str(critic_dir), last_step_only=True, label_type="hard",
        max_length=args.max_length, eval_fraction=0.0, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.max_steps // 10, lr_scheduler_type="cosine", weight_decay=0.0,
        logging_steps=10, save_steps=args.max_steps, save_total_limit=1, report_to="none", seed=0,
    )  # fmt: skip
    run_critic_training(
        ModelConfig(model_name_or_path=args.model, use_lora=True),
        CriticDataConfig(init_from=args.model, train_data=str(train_dir), delimiter=DELIMITER),
        critic_args,
        overwrite=True,
    )
    figures = {
        k: round(v, 4) if isinstance(v, float) else v for k, v in evaluate(critic_dir, held_out, 4).items()
    }
    figures["train_solutions"] = 4 * len(train)
    print(f"results: {record.save(figures)}")
    print(summary_line(figures))
    return figures


if __name__ == "__main__":
    main()
