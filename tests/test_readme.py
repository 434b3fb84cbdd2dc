"""The README's commands run as written after `make demo`.

Every ```bash block of README.md that reads the demo's outputs (``runs/demo/...``) is split into its
commands, and each runs in its own process from a folder laid out as `make demo` leaves the
repository: ``recipes/`` and a ``runs/demo/`` built here in seconds from the tiny test actor (the
same folder names; a test checks them against what ``llmac demo`` writes). Commands run as written
plus flags that only shrink them (fewer problems, steps and tokens; the HF engine instead of vLLM's
start-up), appended last so they override. The ```python blocks that read ``runs/demo`` run as
scripts and must print; the ```console block's command must print the line shown.

Not run here: ``accelerate launch`` lines (multi-process runs are covered by the *_distributed
tests) and ``bench/`` lines (each benchmark has its own ``--quick`` check).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # ~3 min on 2 idle cores: a dozen commands, each importing torch

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEMO_DIR = "runs/demo"

# What shrinks each command (appended after the README's own flags, so these win).
SHRINK: dict[str, list[str]] = {
    "sft": ["--max_steps", "2", "--num_train", "64", "--save_steps", "2", "--logging_steps", "1"],
    "eval": ["--num_eval", "4", "--num_samples", "2", "--max_new_tokens", "32", "--engine", "hf"],
    "generate": ["--num_train", "4", "--num_samples", "2", "--max_new_tokens", "32", "--engine", "hf"],
    "critic label": [
        "--num_train", "3", "--num_solutions", "2", "--num_rollouts", "2", "--solution_max_new_tokens", "32",
        "--max_new_tokens", "32", "--engine", "hf",
    ],
    "critic train": ["--max_steps", "2", "--eval_strategy", "no", "--eval_fraction", "0", "--save_steps", "2"],
    "ppo": [
        "--num_iterations", "1", "--prompts_per_iteration", "4", "--samples_per_prompt", "2",
        "--mini_batch_size", "8", "--max_new_tokens", "32", "--num_eval", "4", "--eval_every", "0",
        "--checkpoint_every", "0", "--engine", "hf", "--old_logprobs", "trainer", "--progress", "false",
    ],
}  # fmt: skip
NOT_RUN = ("accelerate launch", ".venv/bin/python bench/", "source .venv/bin/activate")


# ---------------------------------------------------------------------------------- the README


def blocks(language: str) -> list[str]:
    """The bodies of README.md's fenced blocks in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def demo_commands() -> list[str]:
    """Every command of the bash blocks that read the demo's outputs, in README order."""
    return [cmd for block in blocks("bash") if DEMO_DIR in block for cmd in shell_commands(block)]


def llmac_argv(command: str) -> list[str]:
    """``llmac ...`` (or ``.venv/bin/llmac ...``) as this interpreter's ``-m llmac`` with the shrinking flags."""
    words = shlex.split(command)
    assert words[0] in ("llmac", ".venv/bin/llmac"), command
    args = words[1:]
    name = " ".join(args[:2]) if args[:1] == ["critic"] else (args[0] if args else "")
    return [sys.executable, "-m", "llmac", *args, *SHRINK.get(name, [])]


def command_id(command: str) -> str:
    words = shlex.split(command)[:3]
    return " ".join(w for w in words if not w.startswith("-"))


# ---------------------------------------------------------------------------------- a demo's layout


def names_the_demo_writes() -> set[str]:
    """The entries ``llmac demo`` makes in its run folder, read from its source."""
    source = (REPO / "llmac" / "demo.py").read_text()
    return set(re.findall(r'run_dir / "([\w.]+)"', source))


@pytest.fixture(scope="module")
def demo_workdir(tmp_path_factory, tiny_actor_dir) -> Path:
    """A folder like the repository after `make demo`: ``recipes/`` and a small ``runs/demo/``.

    The actor is the tiny test actor; rollouts and MC labels are sampled from it with the HF engine
    (a few problems, short completions); the critic is that actor with a zero value head; the PPO
    run holds copies of both and a two-line ``metrics.jsonl``.
    """
    from llmac.critic.labelling import MCLabelConfig, label_steps
    from llmac.critic.model import init_critic, load_critic_tokenizer
    from llmac.data.tasks import TaskConfig, load_task
    from llmac.engines import EngineConfig, SamplingConfig, build_engine
    from llmac.metrics_log import MetricsLog
    from llmac.rewards import math_rewards
    from llmac.rollouts import sample_rollouts

    work = tmp_path_factory.mktemp("readme")
    (work / "recipes").symlink_to(REPO / "recipes")
    run = work / DEMO_DIR
    shutil.copytree(tiny_actor_dir, run / "sft")
    task = TaskConfig(task="arithmetic", num_train=200, num_eval=6)
    engine = build_engine(str(run / "sft"), EngineConfig(engine="hf", engine_dtype="float32"))
    try:
        sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=48, seed=0)
        mc = MCLabelConfig(num_rollouts=2, max_new_tokens=48, seed=0)
        held_out = sample_rollouts(engine, load_task(task, "eval"), sampling, math_rewards, progress=False)
        held_out.save_to_disk(str(run / "held_out_rollouts"))
        first = held_out.filter(lambda row: row["sample_index"] == 0)
        label_steps(engine, first, mc, math_rewards, progress=False).save_to_disk(
            str(run / "held_out_labels")
        )
        train_rows = load_task(task, "train").select(range(6))
        solutions = sample_rollouts(engine, train_rows, sampling, math_rewards, progress=False)
        solutions.save_to_disk(str(run / "critic_solutions"))
        label_steps(engine, solutions, mc, math_rewards, progress=False).save_to_disk(
            str(run / "critic_labels")
        )
    finally:
        engine.close()
    critic = init_critic(run / "sft")
    critic.save_pretrained(run / "critic")
    load_critic_tokenizer(run / "sft").save_pretrained(run / "critic")
    shutil.copytree(run / "sft", run / "ppo" / "actor")
    shutil.copytree(run / "critic", run / "ppo" / "critic")
    shutil.copytree(run / "ppo", run / "export")  # stands for `llmac export` of ppo/actor and ppo/critic
    log = MetricsLog(run / "ppo")
    log.write({"iteration": 0, "completions": 0, "eval_accuracy": 0.25})
    log.write({"iteration": 1, "completions": 512, "reward_mean": 0.3, "eval_accuracy": 0.3})
    (run / "demo_results.json").write_text("{}")
    return work


# ---------------------------------------------------------------------------------- the tests


def test_the_readme_names_only_what_the_demo_writes(demo_workdir):
    written = names_the_demo_writes()
    assert {"sft", "critic", "ppo", "held_out_rollouts", "held_out_labels", "critic_labels"} <= written
    used = set(re.findall(rf"{DEMO_DIR}/([\w.]+)", README.read_text()))
    assert used and used <= written, used - written
    assert written <= {p.name for p in (demo_workdir / DEMO_DIR).iterdir()}, "the fixture lacks a stage"


def test_the_readme_has_demo_commands_to_run():
    commands = demo_commands()
    kinds = {command_id(c) for c in commands if not c.startswith(NOT_RUN)}
    for kind in ("llmac eval", "llmac critic train", "llmac critic eval", "llmac ppo", "llmac export"):
        assert kind in kinds, kinds
    assert all(c.startswith(("llmac ", ".venv/bin/llmac ", *NOT_RUN)) for c in commands), commands


@pytest.mark.parametrize("command", [c for c in demo_commands() if not c.startswith(NOT_RUN)], ids=command_id)
def test_a_readme_command_runs_as_written(command, demo_workdir):
    done = subprocess.run(
        llmac_argv(command), cwd=demo_workdir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    for path in re.findall(r"--(?:output_dir|output) (\S+)", command):
        assert (demo_workdir / path).exists(), f"{command} wrote no {path}"


@pytest.mark.parametrize(
    "script", [b for b in blocks("python") if DEMO_DIR in b], ids=lambda b: b.splitlines()[0][:40]
)
def test_a_readme_python_block_runs_and_prints(script, demo_workdir):
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=demo_workdir, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip(), "a README snippet run as a script should show its result"


def test_the_readme_console_block_prints_what_it_shows(demo_workdir):
    (block,) = blocks("console")
    command, *shown = block.strip().splitlines()
    assert command.startswith("$ llmac ")
    done = subprocess.run(
        llmac_argv(command[2:]), cwd=demo_workdir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    expected = "\n".join(shown).replace("/home/me/llmac", str(demo_workdir))
    assert done.stderr.strip() == expected
