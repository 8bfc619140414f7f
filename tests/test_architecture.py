"""The walls between netsight's modules (ARCHITECTURE.md), checked on the source.

* No module imports another module's private names (``from netsight.x import _y``,
  ``x._y``): what crosses a module boundary is public there. Private *modules*
  (``netsight._io``) are shared infrastructure: their public names are fine.
* A layer imports only layers below it (function-level imports included), so the
  engine never reaches up into a capability, nor a capability into a face.
* No module-level import cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "netsight"

#: Top to bottom (ARCHITECTURE.md). A module may import its own layer and below.
#: Matched on the dotted name after ``netsight.``: the first entry that equals the
#: name or is a package prefix of it wins.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "__main__", "cli", "explore"),  # faces
    ("report", "demo", "live"),  # pages: readers of every capability
    (
        "summary",
        "diagram",
        "capture",
        "features",
        "filters",
        "patterns",
        "cam",
        "monitor",
        "examples",
    ),  # capabilities
    ("trace",),  # the engine
    (
        "hooks",
        "_flops",
        "images",
        "models",
        "zoo",
        "datasets",
        "options",
        "errors",
        "_io",
        "_progress",
        "_figures",
        "_markdown",
        "_version",
    ),  # infrastructure
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    rest = module.removeprefix("netsight").lstrip(".") or "__init__"
    for depth, names in enumerate(LAYERS):
        for name in names:
            if rest == name or rest.startswith(name + "."):
                return depth
    raise AssertionError(f"{module} has no layer in tests/test_architecture.py LAYERS")


def _is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def _imports(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str, str]]:
    """(line, imported module, imported name or "") for every netsight import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, "") for a in node.names if a.name.startswith("netsight")
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module if _is_package(module, modules) else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            if source.startswith("netsight"):
                for alias in node.names:
                    found.append((node.lineno, source, alias.name))
    return found


def _owner(module: str, modules: dict[str, Path]) -> str:
    """The package a module's private names are private to (itself if a package)."""
    return module if _is_package(module, modules) else module.rpartition(".")[0]


def test_no_module_imports_another_modules_private_names() -> None:
    modules = _modules()
    offences = []
    for module, path in modules.items():
        for line, source, name in _imports(module, path, modules):
            if source in modules and f"{source}.{name}" in modules:
                continue  # a submodule, not a name
            private = name.startswith("_") and not name.startswith("__")
            if private and source != module:
                offences.append(f"{path.relative_to(SRC)}:{line}: {name} from {source}")
    for path in modules.values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            # module._private attribute reads on an imported netsight module
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id in _imported_module_aliases(tree)
            ):
                offences.append(
                    f"{path.relative_to(SRC)}:{node.lineno}: {node.value.id}.{node.attr}"
                )
    assert not offences, "private names imported across modules:\n" + "\n".join(offences)


def _imported_module_aliases(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {
                a.asname or a.name.split(".")[0]
                for a in node.names
                if a.name.startswith("netsight")
            }
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("netsight"):
            # `from netsight import cam` binds a module
            names |= {a.asname or a.name for a in node.names if a.name.islower()}
    return names


def test_layers_import_only_downwards() -> None:
    modules = _modules()
    offences = []
    for module, path in modules.items():
        mine = _layer(module)
        for line, source, name in _imports(module, path, modules):
            target = f"{source}.{name}" if f"{source}.{name}" in modules else source
            theirs = _layer(target)
            if theirs < mine:
                offences.append(
                    f"{path.relative_to(SRC)}:{line}: {module} (layer {mine}) imports "
                    f"{target} (layer {theirs})"
                )
    assert not offences, "imports that run up the layers:\n" + "\n".join(offences)


def _top_level_imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """netsight modules ``module`` imports when it is itself imported: module-level
    statements only (not function bodies, not ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body: list[ast.stmt] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        body.append(node)
    shallow = ast.Module(body=body, type_ignores=[])
    lines = {n.lineno for n in ast.walk(shallow) if isinstance(n, (ast.Import, ast.ImportFrom))}
    top = set()
    for line, source, name in _imports(module, path, modules):
        if line in lines:
            top.add(f"{source}.{name}" if f"{source}.{name}" in modules else source)
    return top - {module}


def test_no_import_cycle() -> None:
    """A module-level import cycle makes import order matter (the first importer
    sees a half-initialised module); a package importing its own submodules in
    ``__init__`` is not one, so only explicit edges count."""
    modules = _modules()
    graph = {m: _top_level_imports(m, p, modules) & set(modules) for m, p in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its submodule
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    cycles = [c for c in cycles if not _parent_child(c)]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _parent_child(cycle: list[str]) -> bool:
    """A submodule importing a name its own package re-exports closes a loop with
    the package's ``__init__``; Python resolves it when the name is defined first.
    Flagged only if the loop also passes through an unrelated module."""
    return len(set(cycle)) == 2 and (
        cycle[1].startswith(cycle[0] + ".") or cycle[0].startswith(cycle[1] + ".")
    )
