"""The package's import graph has no cycle, and no module imports another's private name.

Run as a script (``python tests/test_imports.py``) it prints the graph, one module a
line with what it imports; imports inside functions count too (a deferred import
still ties the two modules together), marked with ``*``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pnn_mpi"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute name that a (possibly relative) ``from X import`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, dict[str, bool]]:
    """module -> {imported package module: imported only inside a function}."""
    modules = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, dict[str, bool]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        edges: dict[str, bool] = {}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    deferred = id(node) not in top_level and not _in_type_checking(tree, node)
                    edges[target] = edges.get(target, True) and deferred
        graph[name] = edges
    return graph


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test) and node in ast.walk(top) for top in tree.body)


def cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def private_imports() -> list[str]:
    """``from .x import _name`` across modules: where a private name leaks."""
    leaks = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level or (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pnn_mpi")):
                leaks += [f"{path.relative_to(PACKAGE.parent)}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    return leaks


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_private_name_crosses_modules():
    assert private_imports() == []


def main() -> int:
    graph = import_graph()
    short = {m: m.removeprefix("pnn_mpi.") for m in graph}
    for module in sorted(graph):
        edges = " ".join(short[t] + ("*" if deferred else "") for t, deferred in sorted(graph[module].items()))
        print(f"{short[module]:<20} -> {edges}")
    found = cycles(graph)
    for component in found:
        print(f"cycle: {' '.join(short[m] for m in component)}")
    for leak in private_imports():
        print(f"private name imported: {leak}")
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports (* = inside a function), {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
