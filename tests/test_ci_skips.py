"""In CI (``CI=true``) a skip is a failure naming what is missing; outside CI it stays a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBES = """
import pytest

def test_runs():
    pass

def test_imports_a_missing_engine():
    pytest.importorskip("vllm_that_is_not_installed")

def test_needs_a_browser():
    pytest.skip("chromium not found")

@pytest.mark.skipif(True, reason="GSM8K data not found")
def test_needs_data():
    pass

@pytest.mark.ci_may_skip
def test_about_the_machine():
    pytest.skip("runs only as a non-root user")

@pytest.mark.xfail(reason="known", strict=True)
def test_expected_to_fail():
    assert False
"""
MODULE_SKIP = (
    'import pytest\npytest.importorskip("matplotlib_that_is_not_installed")\n\ndef test_x():\n    pass\n'
)


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probes.py").write_text(PROBES)
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    # A failed collection stops the run unless told to go on: here, to see every probe's outcome.
    command = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", str(tmp_path)]  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_outside_ci_skips_stay_skips(tmp_path):
    result = _run(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed, 5 skipped, 1 xfailed" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_skip_for_a_missing_dependency_fails_and_says_how_to_install_it(tmp_path, ci):
    result = _run(tmp_path, ci=ci)
    out = result.stdout
    assert result.returncode == 1, out[-3000:]
    # A skip in a test fails it; one in its setup (a skipif marker, a fixture) or collection is an error.
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed, 2 errors" in out, out[-3000:]
    summary = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    assert (
        sum(line.startswith("FAILED test_probes.py::test_imports_a_missing_engine") for line in summary) == 1
    )
    assert sum(line.startswith("FAILED test_probes.py::test_needs_a_browser") for line in summary) == 1
    assert sum(line.startswith("ERROR test_probes.py::test_needs_data") for line in summary) == 1
    assert sum(line.startswith("ERROR test_module_skip.py") for line in summary) == 1
    assert [line for line in summary if line.startswith("SKIPPED")] == [
        "SKIPPED [1] test_probes.py:19: runs only as a non-root user"
    ]
    assert "could not import 'vllm_that_is_not_installed'" in out and "bash scripts/setup.sh" in out
    assert "apt-get install chromium" in out
    assert "put GSM8K's train.jsonl" in out
    assert "could not import 'matplotlib_that_is_not_installed'" in out and "'.[plot]'" in out
