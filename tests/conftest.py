"""Shared fixtures and the rules every test run follows.

* ``--update-golden`` rewrites the golden files under tests/golden/ instead of
  comparing against them.
* Under ``CI=true`` a skipped test fails the run: in CI every binary and
  package the suite needs is installed, so a skip can only hide a gap.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"


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
        if update or not path.exists():
            if not update and os.environ.get("CI") == "true":
                pytest.fail(f"golden file {path} is missing; run pytest --update-golden")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        expected = path.read_text(encoding="utf-8")
        assert text == expected, f"output differs from {path}; rerun with --update-golden"

    return check


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        if reporter is not None:
            reporter.write_line(
                f"CI=true: {len(skipped)} test(s) skipped; a skip in CI counts as a failure",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    # NETSIGHT_TEST_NO_ONEDNN=1 runs the convolutions on PyTorch's native CPU kernels
    # instead of oneDNN's: another kernel family with another rounding, as another
    # machine's oneDNN may pick (oneDNN chooses its kernels by CPU, whatever
    # ATEN_CPU_CAPABILITY says). `make test` runs the parity tests this way once more.
    if os.environ.get("NETSIGHT_TEST_NO_ONEDNN", "").lower() in {"1", "true", "yes"}:
        torch.backends.mkldnn.enabled = False
