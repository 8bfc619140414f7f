"""Shared fixtures and the rules every test run follows.

* A golden file under tests/golden/ that is missing is a failure; ``--update-golden``
  (re)writes the golden files from the current output instead of comparing.
* In CI (``CI`` set to a true value: ``true``, ``1``, ``yes`` or ``on``, any case)
  a skipped test, an expected failure (xfail) and an unexpected pass (xpass) each
  fail the run: in CI every binary and package the suite needs is installed, so a
  skip can only hide a gap, and so can an xfail. (``xfail_strict = true`` in
  pyproject.toml already makes an xpass a failure everywhere.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"

CI_TRUE = frozenset({"true", "1", "yes", "on"})
# Outcomes that pass a local run but fail a CI run.
CI_FAILURES = ("skipped", "xfailed", "xpassed")


def in_ci() -> bool:
    """Whether the ``CI`` environment variable is set to a true value."""
    return os.environ.get("CI", "").strip().lower() in CI_TRUE


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/* from the current output",
    )


@pytest.fixture
def golden(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Compare text with tests/golden/NAME, or rewrite it with --update-golden."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(
                f"golden file {path} is missing; write it with pytest --update-golden "
                f"and review the new file before committing it"
            )
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"output differs from {path}; rerun with --update-golden"

    return check


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not in_ci():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:  # an xdist worker: the controller's reporter sees every report
        return
    counts = {kind: len(reporter.stats.get(kind, [])) for kind in CI_FAILURES}
    if any(counts.values()):
        listed = ", ".join(f"{n} {kind}" for kind, n in counts.items() if n)
        reporter.write_line(
            f"CI={os.environ.get('CI')}: {listed}; in CI a skip, an xfail or an xpass "
            f"counts as a failure",
            red=True,
        )
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    # `make test` runs two xdist workers on two cores: one torch thread each, so the
    # workers do not oversubscribe the cores (a detection model's test took 15 s with
    # two threads per worker, 10 s with one). A run without xdist keeps torch's default.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
    # NETSIGHT_TEST_NO_ONEDNN=1 runs the convolutions on PyTorch's native CPU kernels
    # instead of oneDNN's: another kernel family with another rounding, as another
    # machine's oneDNN may pick (oneDNN chooses its kernels by CPU, whatever
    # ATEN_CPU_CAPABILITY says). `make test` runs the parity tests this way once more.
    if os.environ.get("NETSIGHT_TEST_NO_ONEDNN", "").lower() in {"1", "true", "yes"}:
        torch.backends.mkldnn.enabled = False
