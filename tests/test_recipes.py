"""Every recipe parses into the configs of the command it is for, GPU recipes included (they cannot run
here, so this is what keeps them in step with the code), and the accelerate configs point at
DeepSpeed configs that exist."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmac.config import parse_config
from llmac.critic.cli import LABEL_CONFIG_CLASSES
from llmac.critic.training import CONFIG_CLASSES as CRITIC_TRAIN_CLASSES
from llmac.critique.self_training import CONFIG_CLASSES as CRITIQUE_SELF_TRAIN_CLASSES
from llmac.critique.sft import CONFIG_CLASSES as CRITIQUE_SFT_CLASSES
from llmac.critique.trainer import CONFIG_CLASSES as CRITIQUE_TRAIN_CLASSES
from llmac.dapo.build import CONFIG_CLASSES as DAPO_BUILD_CLASSES
from llmac.dapo.trainer import CONFIG_CLASSES as DAPO_TRAIN_CLASSES
from llmac.demo import CONFIG_CLASSES as DEMO_CLASSES
from llmac.mcts.build import CONFIG_CLASSES as MCTS_BUILD_CLASSES
from llmac.mcts.expert_iteration import CONFIG_CLASSES as MCTS_ITERATE_CLASSES
from llmac.ppo.trainer import CONFIG_CLASSES as PPO_CLASSES
from llmac.sft import CONFIG_CLASSES as SFT_CLASSES

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
# Which command's configs each recipe fills (patterns relative to recipes/).
COMMANDS = {
    "ppo/*.yaml": PPO_CLASSES,
    "sft/*.yaml": SFT_CLASSES,
    "critic/label_*.yaml": LABEL_CONFIG_CLASSES,
    "critic/tiny_arithmetic.yaml": CRITIC_TRAIN_CLASSES,
    "demo*.yaml": DEMO_CLASSES,
    "dapo/*_build.yaml": DAPO_BUILD_CLASSES,
    "dapo/*_train.yaml": DAPO_TRAIN_CLASSES,
    "dapo/qwen*.yaml": DAPO_TRAIN_CLASSES,
    "critique/*_sft.yaml": CRITIQUE_SFT_CLASSES,
    "critique/*_stage*.yaml": CRITIQUE_TRAIN_CLASSES,
    "critique/*_self_train.yaml": CRITIQUE_SELF_TRAIN_CLASSES,
    "critique/qwen*.yaml": CRITIQUE_TRAIN_CLASSES,
    "mcts/*_build.yaml": MCTS_BUILD_CLASSES,
    "mcts/qwen2.5-math-1.5b_gsm8k.yaml": MCTS_BUILD_CLASSES,
    "mcts/*_expert_iteration.yaml": MCTS_ITERATE_CLASSES,
}


def _recipes() -> list[tuple[Path, tuple]]:
    return [
        (path, classes) for pattern, classes in COMMANDS.items() for path in sorted(RECIPES.glob(pattern))
    ]


def test_every_command_recipe_has_its_command():
    covered = [path for path, _ in _recipes()]
    recipes = sorted(p for p in RECIPES.rglob("*.yaml") if p.parent.name != "accelerate")
    assert sorted(covered) == recipes  # a new recipe needs a line in COMMANDS
    assert len(set(covered)) == len(covered)


@pytest.mark.parametrize(
    "recipe, classes", _recipes(), ids=lambda v: str(v.relative_to(RECIPES)) if isinstance(v, Path) else ""
)
def test_recipe_parses_into_its_commands_configs(recipe, classes, monkeypatch):
    # An unknown or misspelt field raises; so do the configs' own checks of their values.
    monkeypatch.chdir(REPO)
    configs = parse_config(classes, ["--config", str(recipe)])
    fields = {name for config in configs for name in vars(config)}
    keys = set(yaml.safe_load(recipe.read_text())) - {"env"}
    assert keys <= fields


@pytest.mark.parametrize("config", sorted((RECIPES / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_point_at_deepspeed_configs(config):
    settings = yaml.safe_load(config.read_text())
    deepspeed = json.loads((REPO / settings["deepspeed_config"]["deepspeed_config_file"]).read_text())
    stage = deepspeed["zero_optimization"]["stage"]
    assert config.name.startswith(f"zero{stage}_")
    assert settings["deepspeed_config"]["zero3_init_flag"] == (stage == 3)
    if config.name.endswith("_cpu.yaml"):
        # A DeepSpeed optimizer block compiles fused_adam (minutes) and needs CUDA; CPU runs use AdamW.
        assert "optimizer" not in deepspeed and settings["num_processes"] == 2
