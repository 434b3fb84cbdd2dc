"""Critique-RL: the objective's pure functions against hand-computed numbers, the config, and a short run
on the tiny testbed that must raise the critic's stage-I reward."""

from __future__ import annotations

import json
import math
import zlib

import pytest
import torch

from llmac.critique.config import STAGE_REWARDS, CritiqueRLConfig, reads_refinement
from llmac.critique.format import CompactFormat, register_critique_format
from llmac.critique.objective import critique_advantages, critique_policy_loss, kl_shaped_rewards
from llmac.errors import ConfigError

# ------------------------------------------------------------------------------------ objective


def test_kl_shaped_rewards_take_the_summed_k1_kl_of_each_critique():
    rewards = torch.tensor([1.0, -1.0])
    old = torch.tensor([[-0.5, -1.0], [-2.0, 0.0]])
    ref = torch.tensor([[-1.0, -1.0], [-1.5, 9.0]])  # 9.0 sits on padding and must not count
    mask = torch.tensor([[True, True], [True, False]])
    shaped, kl = kl_shaped_rewards(rewards, old, ref, mask, kl_coef=0.1)
    assert kl.tolist() == pytest.approx([0.5, -0.5])
    assert shaped.tolist() == pytest.approx([0.95, -0.95])
    unshaped, no_kl = kl_shaped_rewards(rewards, old, None, mask, kl_coef=0.1)
    assert unshaped.tolist() == [1.0, -1.0] and no_kl.tolist() == [0.0, 0.0]


def test_rloo_advantages_leave_each_critique_out_of_its_own_baseline():
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0])
    advantages = critique_advantages(rewards, group_size=4)
    # group 1: 1 - mean(-1, -1, 1) = 4/3, -1 - mean(1, -1, 1) = -4/3; group 2: 1 - 1/3, -1 - 1
    expected = [4 / 3, -4 / 3, -4 / 3, 4 / 3, 2 / 3, 2 / 3, 2 / 3, -2.0]
    assert advantages.tolist() == pytest.approx(expected)
    assert critique_advantages(torch.ones(4), group_size=4).tolist() == [0.0] * 4  # no signal, no push
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        critique_advantages(rewards, group_size=3)
    with pytest.raises(ValueError, match="needs a value model"):
        critique_advantages(rewards, group_size=4, estimator="step_gae")


def test_first_pass_loss_is_reinforce_with_the_critiques_advantage_on_every_token():
    logprobs = torch.tensor([[-0.2, -0.4, -9.0], [-0.3, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    advantages = torch.tensor([2.0, -1.0])
    loss, stats = critique_policy_loss(logprobs, logprobs.detach(), advantages, mask, aggregation="token")
    assert loss.item() == pytest.approx((-2.0 - 2.0 + 1.0) / 3)  # -A per token, over the 3 tokens
    loss.backward()
    expected = [[-2 / 3, -2 / 3, 0.0], [1 / 3, 0.0, 0.0]]  # d/dlogp of -A * exp(logp - old) at ratio 1
    assert logprobs.grad.tolist() == [pytest.approx(row) for row in expected]
    assert stats["ratio"] == pytest.approx(1.0) and stats["clip_fraction"] == 0.0
    sequence, _ = critique_policy_loss(logprobs, logprobs.detach(), advantages, mask, aggregation="sequence")
    assert sequence.item() == pytest.approx((-2.0 + 1.0) / 2)  # mean over critiques of their token means


def test_later_passes_clip_the_ratio():
    old = torch.tensor([[0.0]])
    logprobs = torch.tensor([[math.log(1.5)]], requires_grad=True)  # ratio 1.5 > 1 + clip
    loss, stats = critique_policy_loss(logprobs, old, torch.tensor([1.0]), torch.tensor([[True]]), clip=0.2)
    assert loss.item() == pytest.approx(-1.2)
    loss.backward()
    assert logprobs.grad.item() == 0.0 and stats["clip_fraction"] == 1.0


# ------------------------------------------------------------------------------------ config


def test_each_stage_trains_on_its_reward_and_others_are_named_alternatives():
    assert CritiqueRLConfig(actor="a").reward_name == STAGE_REWARDS[1] == "discrimination"
    assert CritiqueRLConfig(actor="a", stage=2).reward_name == "helpfulness"
    assert CritiqueRLConfig(actor="a", stage=2, reward="delta").reward_name == "delta"
    assert not reads_refinement("discrimination")
    assert all(reads_refinement(name) for name in ("helpfulness", "delta", "correct"))
    with pytest.raises(ConfigError, match="reward 'r_delta'"):
        CritiqueRLConfig(actor="a", reward="r_delta")
    with pytest.raises(ConfigError, match="actor"):
        CritiqueRLConfig()
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        CritiqueRLConfig(actor="a", samples_per_prompt=1)  # RLOO needs a group


# ------------------------------------------------------------------------------------ a short run

EXACT = "llmac.critique.oracle:exact_answer_rewards"


def _gold(question: str) -> list[str]:
    from llmac.critique.oracle import chain_expression
    from llmac.data.arithmetic import solve_chain

    return solve_chain(chain_expression(question))


def _slipped(question: str) -> str:
    """A solution whose first step is one off, the slip carried on to the final answer."""
    steps = _gold(question)
    first, _, value = steps[0].rpartition(" = ")
    lines, running = [f"{first} = {int(value) + 1}"], int(value) + 1
    for step in steps[1:-1]:  # "x op n = y"
        op, n = step.split(" = ")[0].split(" ")[-2:]
        running = running + int(n) if op == "+" else running - int(n)
        lines.append(f"{lines[-1].rpartition(' = ')[2]} {op} {n} = {running}")
    return "\n".join([*lines, f"Answer: {running}"])


def _rare(question: str) -> bool:
    return zlib.crc32(question.encode()) % 8 == 0


def _solution(question: str) -> str:
    """The scripted actor's answer: right for one problem in eight, else a slip in the first step."""
    return "\n".join(_gold(question)) if _rare(question) else _slipped(question)


class ScriptedActor:
    """A frozen actor that answers (plain prompts: no chat template) with :func:`_solution`."""

    delimiter = "\n"

    class tokenizer:  # noqa: N801 - what format_prompt reads
        chat_template = None

    def generate(self, prompts, sampling):
        from llmac.engines import Completion

        return [[Completion([1], [0.0], "stop", text=_solution(p))] * sampling.n for p in prompts]

    def continue_from(self, prompts, prefixes, sampling):
        """The rest of its own answer after ``prefix``, fixed when the prefix is still on the right path
        (so a critique that flags the slipped step gets a right answer back)."""
        from llmac.engines import Completion

        groups = []
        for prompt, prefix in zip(prompts, prefixes, strict=True):
            gold = _gold(prompt)
            done = prefix.splitlines()
            source = gold if done == gold[: len(done)] else _solution(prompt).splitlines()
            groups.append([Completion([1], [0.0], "stop", text="\n".join(source[len(done) :]))] * sampling.n)
        return groups

    def close(self) -> None:
        pass


def test_the_scripted_actor_is_right_one_time_in_eight(arithmetic_rows):
    from llmac.critique.oracle import judge_solution

    judged = [judge_solution(q, _solution(q)) for q in arithmetic_rows["question"][:200]]
    right = [j.answer_correct for j in judged]
    assert 0.05 < sum(right) / len(right) < 0.2
    assert all(j.first_error == (-1 if ok else 0) for j, ok in zip(judged, right, strict=True))


class VerdictOnly(CompactFormat):
    """The compact request, answered by the final verdict alone (``Answer: r|w``): a format a tiny critic
    learns in seconds (its steps read as unjudged, so wrong, which only the refinement reads)."""

    name = "verdict_only"

    def render(self, judgements, final_correct: bool) -> str:
        return f"Answer: {'r' if final_correct else 'w'}"


register_critique_format(VerdictOnly())


def _run_config(tmp_path, **overrides) -> CritiqueRLConfig:
    """A short run on the scripted actor with the verdict-only critic; ``overrides`` set the rest."""
    settings = dict(
        output_dir=str(tmp_path / "run"), actor="scripted", answer_reward=EXACT, checkpoint_every=0,
        progress=False, samples_per_prompt=4, max_new_tokens=16, critique_format=VerdictOnly.name,
        learning_rate=2e-4,
    )  # fmt: skip
    return CritiqueRLConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def warm_critic_dir(arithmetic_rows, tmp_path_factory):
    """A tiny critic warmed on oracle verdicts of answers that were right seven times in eight: it writes
    the format and mostly says "Correct", the wrong verdict for the scripted actor's answers."""
    from datasets import Dataset

    from llmac.critique.data import CritiqueDataConfig, critique_sft_dataset
    from llmac.models import TinyModelConfig, warm_tiny_actor

    rows = arithmetic_rows.select(range(256, 512))
    answers = [_slipped(q) if _rare(q) else "\n".join(_gold(q)) for q in rows["question"]]
    rollouts = Dataset.from_dict(
        {"question": rows["question"], "answer": rows["answer"], "completion": answers}
    )
    data = critique_sft_dataset(rollouts, CritiqueDataConfig(critique_format=VerdictOnly.name))
    out = tmp_path_factory.mktemp("critic")
    return warm_tiny_actor(data["question"], data["solution"], out, steps=60, config=TinyModelConfig(seed=0))


def test_stage_one_raises_the_critics_reward_and_saves_a_plain_critic(warm_critic_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmac.config import ModelConfig
    from llmac.critique.trainer import CritiqueRLTrainer
    from llmac.data.tasks import TaskConfig
    from llmac.engines import EngineConfig, build_engine

    config = _run_config(
        tmp_path, num_iterations=8, eval_every=8, eval_problems=32, prompts_per_iteration=32, kl_coef=0.01,
        mini_batch_size=128, balance_solutions=False,  # mostly wrong answers: "Wrong" is the verdict to learn
    )  # fmt: skip
    task = TaskConfig(task="arithmetic", num_train=32, num_eval=32)  # the same 32 problems every iteration
    engines = EngineConfig(engine="hf", engine_dtype="float32")
    critic = build_engine(warm_critic_dir, engines)
    model = ModelConfig(model_name_or_path=str(warm_critic_dir))
    try:
        CritiqueRLTrainer(
            model, task, engines, config, critic_engine=critic, actor_engine=ScriptedActor()
        ).train()
    finally:
        critic.close()
    rows = _rows(tmp_path / "run")
    iterations = [r for r in rows if r["iteration"] > 0]
    assert all(r["skipped_iteration"] == 0 for r in iterations)
    # The same answers every iteration: the first critiqued by the SFT'd critic, the last by the trained one.
    assert iterations[0]["actor_accuracy"] < 0.3  # "Wrong" is the likelier verdict to be right
    last = [r["reward"] for r in iterations[-3:]]
    assert iterations[0]["reward"] < 0 and sum(last) / 3 > iterations[0]["reward"] + 0.5, rows
    assert rows[-1]["eval_acc_dis"] >= rows[0]["eval_acc_dis"], rows  # held out, greedy
    assert all(r["kl"] != 0 for r in iterations[1:])  # the critic moved away from its reference
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "critic")
    assert saved.config.vocab_size == len(critic.tokenizer)


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_stage_two_rewards_the_refinement_a_critique_leads_to(warm_critic_dir, tmp_path):
    """The scripted actor answers right whenever it regenerates from a flagged first step, so stage II's
    reward is 1 + 0.2 for every right verdict (a rejected wrong answer comes back right, an accepted right
    one stays right) and -1 for every wrong one: mean reward = 2.2 Acc@Dis - 1, and no answer turns wrong."""
    from llmac.config import ModelConfig
    from llmac.critique.trainer import CritiqueRLTrainer
    from llmac.data.tasks import TaskConfig
    from llmac.engines import EngineConfig, build_engine

    config = _run_config(tmp_path, stage=2, num_iterations=2, eval_every=0, prompts_per_iteration=16,
                         balance_solutions=False)  # actor_accuracy and acc_refine over the same solutions  # fmt: skip
    engines = EngineConfig(engine="hf", engine_dtype="float32")
    critic = build_engine(warm_critic_dir, engines)
    task = TaskConfig(task="arithmetic", num_train=64, num_eval=8)
    try:
        CritiqueRLTrainer(
            ModelConfig(model_name_or_path=str(warm_critic_dir)),
            task,
            engines,
            config,
            critic,
            ScriptedActor(),
        ).train()
    finally:
        critic.close()
    for row in _rows(tmp_path / "run"):
        assert row["reward"] == pytest.approx(2.2 * row["acc_dis"] - 1.0)
        assert row["c_to_i"] == 0.0 and row["delta"] == pytest.approx(row["i_to_c"])
        assert row["acc_refine"] == pytest.approx(row["actor_accuracy"] + row["i_to_c"])


def test_balanced_iterations_critique_as_many_right_solutions_as_wrong(
    warm_critic_dir, arithmetic_rows, tmp_path
):
    """With ``balance_solutions`` an iteration critiques every right solution and as many wrong ones."""
    from llmac.config import ModelConfig
    from llmac.critique.oracle import judge_solution
    from llmac.critique.trainer import CritiqueRLTrainer
    from llmac.data.tasks import TaskConfig, load_task
    from llmac.engines import EngineConfig, build_engine

    task = TaskConfig(task="arithmetic", num_train=32, num_eval=32)
    right = sum(judge_solution(q, _solution(q)).answer_correct for q in load_task(task, "rl")["question"])
    assert 0 < right < 16  # the scripted actor is right about one time in eight
    engines = EngineConfig(engine="hf", engine_dtype="float32")
    critic = build_engine(warm_critic_dir, engines)
    config = _run_config(
        tmp_path, num_iterations=1, eval_every=0, prompts_per_iteration=32, mini_batch_size=128
    )
    try:
        CritiqueRLTrainer(ModelConfig(model_name_or_path=str(warm_critic_dir)), task, engines, config,
                          critic_engine=critic, actor_engine=ScriptedActor()).train()  # fmt: skip
    finally:
        critic.close()
    (row,) = [r for r in _rows(tmp_path / "run") if r["iteration"] == 1]
    assert row["completions"] == 2 * right * config.samples_per_prompt
    assert row["actor_accuracy"] == pytest.approx(right / 32)  # the actor itself, before the balancing
