"""The rules tests/conftest.py sets for every run, checked by running pytest on tiny
test files in a subprocess with a copy of that conftest: in CI a skip, an xfail or an
xpass fails the run; a missing golden file fails unless ``--update-golden``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

OUTCOMES = """
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("no such binary")

@pytest.mark.xfail(reason="a known gap")
def test_xfails():
    raise AssertionError

@pytest.mark.xfail(reason="a gap that was closed", strict=False)
def test_xpasses():
    pass
"""

GOLDEN_USER = """
def test_uses_golden(golden):
    golden("out.txt", "the output\\n")
"""


def _project(tmp_path: Path, tests: str) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(CONFTEST, root / "conftest.py")
    (root / "test_tiny.py").write_text(tests, encoding="utf-8")
    return root


def _pytest(root: Path, ci: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # a faster start; xdist is asked for by name
    # -c /dev/null: none of the project's settings (its xfail_strict among them), only
    # the copied conftest's rules.
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(root)),
            *("-p", "no:cacheprovider", "-q", *args, str(root)),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _conftest_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("netsight_tests_conftest", CONFTEST)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("0", False),
        ("false", False),
        ("no", False),
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        (" on ", True),
    ],
)
def test_any_true_ci_value_means_ci(
    value: str | None, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert _conftest_module().in_ci() is expected


def test_skip_xfail_and_xpass_fail_the_run_only_in_ci(tmp_path: Path) -> None:
    root = _project(tmp_path, OUTCOMES)
    run = _pytest(root, None)
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    assert "1 passed, 1 skipped, 1 xfailed, 1 xpassed" in run.stdout
    run = _pytest(root, "1")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout
    assert "CI=1: 1 skipped, 1 xfailed, 1 xpassed; in CI a skip" in run.stdout
    # Without the skip, the xfail and the xpass are enough.
    run = _pytest(root, "Yes", "-k", "test_xfails or test_xpasses")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout
    # A clean run passes in CI.
    run = _pytest(root, "true", "-k", "test_passes")
    assert run.returncode == 0, run.stdout


def test_skip_fails_the_run_in_ci_under_xdist(tmp_path: Path) -> None:
    # make test runs the suite with -n 2: the controller sees the workers' reports.
    pytest.importorskip("xdist")
    root = _project(tmp_path, OUTCOMES)
    run = _pytest(root, "true", "-p", "xdist", "-n", "1", "-k", "test_skips or test_passes")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout
    assert "1 skipped; in CI a skip" in run.stdout


def test_missing_golden_file_fails_unless_update_golden(tmp_path: Path) -> None:
    root = _project(tmp_path, GOLDEN_USER)
    golden = root / "golden" / "out.txt"
    run = _pytest(root, None)  # outside CI too (it used to write the file and pass)
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.stdout
    assert "golden file" in run.stdout and "is missing" in run.stdout
    assert not golden.exists()
    run = _pytest(root, None, "--update-golden")
    assert run.returncode == 0, run.stdout
    assert golden.read_text(encoding="utf-8") == "the output\n"
    assert _pytest(root, "true").returncode == 0
    golden.write_text("another output\n", encoding="utf-8")
    run = _pytest(root, None)
    assert run.returncode == pytest.ExitCode.TESTS_FAILED and "output differs" in run.stdout
