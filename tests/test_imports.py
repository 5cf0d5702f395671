"""The import graph is a DAG: protocol <- workers <- supervisor, and no cycles inside a package.

Imports are read with ``ast``, so imports inside functions and under ``TYPE_CHECKING`` count too:
a lazy import that hides a cycle is still a cycle. Importing a module's own parent package (which
Python does anyway) is not an edge.
"""

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "workers", "supervisor")
# Layer -> the top-level packages it must never import.
FORBIDDEN = {"protocol": {"workers", "supervisor"}, "workers": {"supervisor"}}
# Cycles owned by work in flight elsewhere; each entry names one strongly connected component.


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imported_names(name: str, path: Path) -> Iterator[str]:
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


@functools.cache  # parsed once for the three tests below; none of them changes it
def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for imported in _imported_names(name, path):
            while imported and imported not in modules:  # pkg.mod.Class -> pkg.mod
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                edges.add(imported)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_layers_import_only_downwards() -> None:
    wrong = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        for target in sorted(targets)
        if target.split(".")[0] in FORBIDDEN.get(name.split(".")[0], set())
    ]
    assert not wrong, "protocol <- workers <- supervisor is broken:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    cycles = [sorted(c) for c in _cycles(_graph())]
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_lazy_and_relative_imports() -> None:
    graph = _graph()
    assert "workers.scoreboard" in graph["supervisor.pool"]
    assert "protocol.messages" in graph["workers.worker"]


def test_every_package_is_installed_by_a_plain_pip_install() -> None:
    """``pip install .`` (the README's first command) installs the packages pyproject.toml lists,
    not the folders: a package left out imports fine from the checkout (and from an editable
    install) and fails on a fresh machine. supervisor.workflows was, until this test."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {_module_name(init) for pkg in PACKAGES for init in (ROOT / pkg).rglob("__init__.py")}
    assert found - listed == set()
