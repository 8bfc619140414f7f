"""netsight.errors: one home for every exception and warning netsight raises."""

from __future__ import annotations

import importlib

import pytest

from netsight import errors

#: Where each error was defined before errors.py; it stays importable from there.
HOMES = {
    "TraceError": "netsight.trace",
    "GraphvizNotFoundError": "netsight.diagram.graph",
    "LatexNotFoundError": "netsight.diagram.tikz",
    "LatexError": "netsight.diagram.tikz",
    "UsageError": "netsight.cli.common",
    "RunInUseError": "netsight.monitor.lock",
    "TrainingWarning": "netsight.monitor",
    "MonitorWriteError": "netsight.monitor.sinks",
    "CAMWarning": "netsight.cam",
    "LayoutError": "netsight.cam.layout",
    "LazyModuleError": "netsight.hooks",
    "CaptureBudgetError": "netsight.capture",
    "ModelSpecError": "netsight.models",
    "UntrustedCheckpointError": "netsight.models",
}


@pytest.mark.parametrize("name", sorted(HOMES))
def test_error_has_one_class_reachable_from_its_old_home(name: str) -> None:
    cls = getattr(errors, name)
    assert getattr(importlib.import_module(HOMES[name]), name) is cls
    base = errors.NetsightWarning if issubclass(cls, Warning) else errors.NetsightError
    assert issubclass(cls, base)


def test_every_error_keeps_the_builtin_callers_catch() -> None:
    assert issubclass(errors.TraceError, RuntimeError)
    assert issubclass(errors.ModelSpecError, ValueError)
    assert issubclass(errors.GraphvizNotFoundError, FileNotFoundError)
    assert issubclass(errors.MonitorWriteError, OSError)
    assert issubclass(errors.CaptureBudgetError, MemoryError)
    assert issubclass(errors.CAMWarning, UserWarning)
    err = errors.MonitorWriteError("disk full")
    assert str(err) == "disk full" and isinstance(err, errors.NetsightError)


def test_all_lists_every_error_and_the_bases() -> None:
    assert set(errors.__all__) == {*HOMES, "NetsightError", "NetsightWarning"}
