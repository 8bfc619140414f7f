"""The trace engine's package layout: every module owns one part, says so in its
docstring, and imports only modules below it (no cycle); nothing outside the
package reaches for its private names."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "netsight"
PACKAGE = SRC / "trace"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _engine_imports(path: Path) -> set[str]:
    """The package's modules that ``path`` imports (``netsight.trace.X``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            name = node.module
            if node.level:  # relative: from .records import X
                name = "netsight.trace." + name
            if name.startswith("netsight.trace."):
                found.add(name.removeprefix("netsight.trace.").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("netsight.trace."):
                    found.add(alias.name.removeprefix("netsight.trace.").split(".")[0])
    return found


def test_every_module_has_a_docstring() -> None:
    for path in PACKAGE.glob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc, f"{path.name} has no docstring saying what it owns"


def test_the_modules_import_each_other_without_a_cycle() -> None:
    graph = {m: _engine_imports(PACKAGE / f"{m}.py") for m in MODULES}
    assert all(deps <= set(MODULES) for deps in graph.values()), graph
    done: list[str] = []
    pending = dict(graph)
    while pending:
        ready = [m for m, deps in pending.items() if deps <= set(done)]
        assert ready, f"import cycle among {sorted(pending)}: {pending}"
        done.extend(sorted(ready))
        for m in ready:
            del pending[m]


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    script = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for loaded in [m for m in sys.modules if m.startswith('netsight')]:\n"
        "        del sys.modules[loaded]\n"
        "    importlib.import_module('netsight.trace.' + name)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_public_names_still_import_from_the_package() -> None:
    engine = importlib.import_module("netsight.trace")
    for name in engine.__all__:
        assert getattr(engine, name) is not None


def test_nothing_outside_the_engine_imports_its_private_names() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if PACKAGE in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("netsight.trace")
                and any(alias.name.startswith("_") for alias in node.names)
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []
