"""Configs refuse nonsense when they are built: every field that declares a ``range`` or ``choices`` is
tried with values just outside it (found here from the declarations, so a new ranged field or config
class is covered without a new line), and ``llmac ppo --temperature 0`` fails while parsing."""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import pytest

from llmac.errors import ConfigError
from llmac.validation import CHOICES, RANGE, Interval, checked_fields, field_problem

REPO = Path(__file__).resolve().parents[1]


def _config_classes() -> list[type]:
    """Every dataclass named ``*Config`` or ``*Settings`` with documented fields (what users set) that a
    module of the llmac package defines."""
    found = {}
    for path in sorted((REPO / "llmac").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if name.endswith("__main__"):
            continue
        for obj in vars(importlib.import_module(name)).values():
            named = isinstance(obj, type) and obj.__name__.endswith(("Config", "Settings"))
            if named and is_dataclass(obj) and obj.__module__ == name and _documented(obj):
                found[f"{name}.{obj.__qualname__}"] = obj
    return list(found.values())


def _documented(cls: type) -> bool:
    return any("help" in f.metadata for f in fields(cls))


CONFIGS = _config_classes()
# What a class needs besides its defaults to be built at all (required fields).
REQUIRED = {
    "ExportConfig": {"source": "runs/x/actor", "output_dir": "runs/x-export"},
    "ServeConfig": {"model": "runs/x/actor"},
    "PromptDataConfig": {"path": "data.jsonl"},
    "CriticDataConfig": {"init_from": "runs/sft", "train_data": "labels"},
    "CriticConfig": {"output_dir": "runs/test-config-validation", "report_to": "none"},
    "ImportGGUFConfig": {"gguf": "model.gguf", "output_dir": "runs/imported"},
    "CritiqueRLConfig": {"actor": "runs/demo/sft"},
    "CritiqueEvalConfig": {"actor": "runs/demo/sft", "critic": "runs/critique/critic"},
    "CritiqueSFTRunConfig": {"actor": "runs/demo/sft"},
    "SelfTrainConfig": {"actor": "runs/demo/sft", "critic": "runs/critique/sft"},
}
# Numbers that are right whatever their value, with the reason; every other number declares a range.
UNBOUNDED = {
    ("MCLabelConfig", "correct_threshold"): "compared with rewards, which any reward function may scale",
}


def _build(cls: type, **values):
    return cls(**{**REQUIRED.get(cls.__name__, {}), **values})


def _is_float(f) -> bool:
    return "float" in str(f.type)


def _bad_values(f) -> list:
    """Values just outside the field's range (each finite end), or a string that is no choice."""
    if CHOICES in f.metadata:
        return ["no-such-choice"]
    interval = Interval.parse(f.metadata[RANGE])
    bad = []
    if not math.isinf(interval.low):
        bad.append(interval.low - 1 if interval.low_closed else interval.low)
    if not math.isinf(interval.high):
        bad.append(interval.high + 1 if interval.high_closed else interval.high)
    if _is_float(f):
        bad.append(math.nan)
    return [int(v) if not _is_float(f) and not math.isnan(v) else v for v in bad]


def _good_values(f) -> list:
    """The values at the ends of the range that belong to it, and one inside; or every choice."""
    if CHOICES in f.metadata:
        return list(f.metadata[CHOICES])
    interval = Interval.parse(f.metadata[RANGE])
    low = interval.low if not math.isinf(interval.low) else -1.0
    inside = low + 1 if low + 1 < interval.high else (low + interval.high) / 2
    good = [inside] + [end for end, closed in ((interval.low, interval.low_closed), (interval.high, interval.high_closed)) if closed]  # fmt: skip
    return [v if _is_float(f) else int(v) for v in good]


CASES = [(cls, f) for cls in CONFIGS for f in checked_fields(cls)]


def _case_id(case) -> str:
    return f"{case[0].__name__}.{case[1].name}" if isinstance(case, tuple) else ""


def test_the_table_finds_every_config():
    names = {cls.__name__ for cls in CONFIGS}
    assert {"PPOConfig", "ModelConfig", "EngineConfig", "SamplingConfig", "TaskConfig", "MCLabelConfig",
            "CriticConfig", "CriticDataConfig", "VerifierConfig", "DemoConfig", "ExportConfig",
            "RolloutRunConfig", "TinyModelConfig", "LoraSettings", "PromptDataConfig"} <= names  # fmt: skip
    assert len(CASES) > 100
    for cls in CONFIGS:
        _build(cls)  # the defaults are valid


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_every_ranged_field_refuses_values_outside_its_range(case):
    cls, f = case
    for bad in _bad_values(f):
        with pytest.raises(ConfigError) as error:
            _build(cls, **{f.name: bad})
        message = str(error.value)
        assert f"{cls.__name__}.{f.name} = {bad!r}: must be " in message and "\n" not in message
    for good in _good_values(f):
        try:
            _build(cls, **{f.name: good})
        except ConfigError as error:  # another field's check may object; this field's must not
            assert f"{cls.__name__}.{f.name} =" not in str(error), f"{good!r} is in {f.metadata}"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda cls: cls.__name__)
def test_every_number_declares_its_range(cls):
    own = {f.name for f in checked_fields(cls)}
    library = {f.name for base in cls.__mro__[1:] if is_dataclass(base) and not base.__module__.startswith("llmac.") for f in fields(base)}  # fmt: skip
    for f in fields(cls):
        numeric = any(t in str(f.type) for t in ("int", "float")) and "bool" not in str(f.type)
        if numeric and f.name not in library and (cls.__name__, f.name) not in UNBOUNDED:
            assert f.name in own, f"{cls.__name__}.{f.name} declares no range (or list it in UNBOUNDED)"
        if f.name in own and RANGE in f.metadata:
            default = f.default if f.default is not MISSING else None
            assert field_problem(f, default) is None, f"{cls.__name__}.{f.name}'s default is out of range"


def test_the_issue_example_names_every_bad_field_in_one_line():
    from llmac.ppo.config import PPOConfig

    with pytest.raises(ConfigError) as error:
        PPOConfig(gamma=-1, lam=5, num_iterations=0, eval_every=-1, max_new_tokens=0, value_coef=-3, warmup_steps=-5)  # fmt: skip
    message = str(error.value)
    assert "\n" not in message
    for problem in (
        "PPOConfig.gamma = -1: must be in [0, 1]",
        "PPOConfig.lam = 5: must be in [0, 1]",
        "PPOConfig.num_iterations = 0: must be >= 1",
        "PPOConfig.eval_every = -1: must be >= 0",
        "PPOConfig.max_new_tokens = 0: must be >= 1",
        "PPOConfig.value_coef = -3: must be >= 0",
        "PPOConfig.warmup_steps = -5: must be >= 0",
    ):
        assert problem in message
    assert message.count("PPOConfig.") == 7


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"old_logprobs": "engine", "temperature": 0.7}, "old_logprobs='engine' needs temperature 1.0"),
        ({"advantage_estimator": "grpo", "samples_per_prompt": 1}, "grpo needs samples_per_prompt >= 2"),
        (
            {"overlong_buffer": 100, "max_new_tokens": 96},
            r"overlong_buffer \(100\) must be <= max_new_tokens",
        ),
        ({"advantage_estimator": "rloo", "kl_coef": 0.1, "kl_in": "reward"}, "kl_in='loss'"),
        (
            {"advantage_estimator": "grpo", "value_warmup_iterations": 3},
            "value_warmup_iterations needs a value",
        ),
        (
            {"advantage_estimator": "lite_ppo", "process_reward_model": "runs/critic"},
            "ignores process rewards",
        ),
    ],
)
def test_ppo_fields_that_contradict_each_other(values, message):
    from llmac.ppo.config import PPOConfig

    with pytest.raises(ConfigError, match=rf"^PPOConfig: .*{message}"):
        PPOConfig(**values)


@pytest.mark.parametrize(
    ("cls_path", "values", "message"),
    [
        ("llmac.config.ModelConfig", {"tiny_hidden_size": 130}, "multiple of tiny_num_heads"),
        ("llmac.models.TinyModelConfig", {"num_heads": 3}, "multiple of num_heads"),
        ("llmac.engines.base.SamplingConfig", {"top_k": 0}, "top_k = 0 samples nothing"),
        ("llmac.engines.EngineConfig", {"delimiter": ""}, "delimiter must be a non-empty"),
        ("llmac.data.tasks.TaskConfig", {"min_terms": 4, "max_terms": 3}, r"min_terms \(4\) > max_terms"),
        ("llmac.data.tasks.TaskConfig", {"min_digits": 3}, r"min_digits \(3\) > max_digits"),
        ("llmac.data.tasks.TaskConfig", {"task": "file"}, "needs --train_path and/or --eval_path"),
        ("llmac.data.tasks.TaskConfig", {"task": "gsm9k"}, "task = 'gsm9k': must be one of"),
        ("llmac.hub.ExportConfig", {"source": ""}, "needs --source and --output_dir"),
    ],
)
def test_other_contradictions(cls_path, values, message):
    module, _, name = cls_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError, match=rf"^{name}: .*{message}"):
        _build(cls, **values)


def test_ppo_temperature_zero_fails_while_parsing_before_any_engine(monkeypatch, tmp_path):
    """`llmac ppo --temperature 0` (the trainer's log-probs divide by it) stops in parse_config."""
    import llmac.ppo.trainer as trainer

    def no_engine(*args, **kwargs):
        raise AssertionError("an engine was built")

    monkeypatch.setattr(trainer, "build_engine", no_engine)
    monkeypatch.setattr(trainer, "PPOTrainer", no_engine)
    monkeypatch.chdir(REPO)
    run = ["--output_dir", str(tmp_path / "run")]
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"PPOConfig.temperature = 0.0: must be > 0"):
        trainer.main(["--temperature", "0", "--old_logprobs", "trainer", *run])
    with pytest.raises(ConfigError, match=r"PPOConfig.temperature = 0.0: must be > 0"):
        trainer.main(["--config", "recipes/ppo/tiny_arithmetic.yaml", "--temperature", "0", *run])
    # The recipe takes the engine's log-probs, which are at temperature 1.
    with pytest.raises(ConfigError, match=r"old_logprobs='engine' needs temperature 1.0"):
        trainer.main(["--config", "recipes/ppo/tiny_arithmetic.yaml", "--temperature", "0.7", *run])
    assert time.perf_counter() - started < 20
    assert not (tmp_path / "run").exists()


def test_ranges_show_in_the_cli_help():
    from llmac.config import _parser_class
    from llmac.ppo.config import PPOConfig

    text = " ".join(_parser_class()([PPOConfig], prog="llmac ppo").format_help().split())
    assert "GAE discount (per step for step_gae). Range: [0, 1]." in text
    assert "{trainer,engine}" in text  # choices go to argparse as they are


@pytest.mark.parametrize("text", ["0, 1", "[1, 0]", "[-inf, 0]", "[0, inf]", "(0; 1)"])
def test_malformed_ranges_are_refused(text):
    with pytest.raises(ValueError, match="bad interval"):
        Interval.parse(text)


def test_option_builds_the_field_the_parser_and_checks_read():
    from dataclasses import dataclass, field

    from llmac.config import option

    @dataclass
    class Spelled:
        a: int = field(default=8, metadata={"help": "A.", "range": "[1, inf)"})
        b: str = field(default="x", metadata={"help": "B.", "choices": ("x", "y")})
        c: dict = field(default_factory=dict, metadata={"help": "C."})
        d: str | None = field(default=None, metadata={"help": "D."})

    @dataclass
    class Optioned:
        a: int = option(8, "A.", range="[1, inf)")
        b: str = option("x", "B.", choices=("x", "y"))
        c: dict = option(help="C.", factory=dict)
        d: str | None = option(None, "D.")

    for spelled, optioned in zip(fields(Spelled), fields(Optioned), strict=True):
        assert dict(optioned.metadata) == dict(spelled.metadata)  # no key added, none dropped
        assert (optioned.default, optioned.default_factory) == (spelled.default, spelled.default_factory)
    assert Optioned().c == {} and Optioned().c is not Optioned().c

    @dataclass
    class Required:
        e: str = option(help="E.")

    assert fields(Required)[0].default is MISSING
    with pytest.raises(TypeError, match="missing 1 required"):
        Required()


def test_require_multiple_names_both_fields():
    from llmac.models import TinyModelConfig

    with pytest.raises(
        ConfigError, match=r"^TinyModelConfig: hidden_size \(130\) must be a multiple of num_heads \(4\)$"
    ):
        TinyModelConfig(hidden_size=130, num_heads=4)
