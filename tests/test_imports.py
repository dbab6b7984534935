"""The package's import graph has no cycle, no lower layer imports a higher one, and no module
imports another's private name.

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


# The layers, lowest first: a module may import its own layer and those below it, never above
# (a deferred import inside a function counts too). The package's __init__, __main__ and the
# estimator sit on top of them all.
LAYERS = ("common", "nn", "data", "parallel", "training", "report", "study", "scaling", "commands")
TOP = len(LAYERS)


def layer_of(module: str) -> int:
    """The layer's position of ``pnn_mpi.<layer>.<module>``; the top for the package's own modules."""
    first = module.removeprefix("pnn_mpi").lstrip(".").split(".")[0]
    return LAYERS.index(first) if first in LAYERS else TOP


def upward_imports(graph: dict[str, dict[str, bool]]) -> list[str]:
    """Every import of a higher layer, as 'importer -> imported'."""
    return [f"{m} -> {t}" for m, edges in graph.items() for t in edges if layer_of(t) > layer_of(m)]


def test_no_lower_layer_imports_a_higher_one():
    assert upward_imports(import_graph()) == []


def test_the_tree_is_the_layers():
    """Every module sits in a layer's folder; only the package's entry points stay at the top."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "estimator.py"]
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(LAYERS)


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
    upward = upward_imports(graph)
    for edge in upward:
        print(f"lower layer imports a higher one: {edge}")
    print(f"layers, lowest first: {' < '.join(LAYERS)} < the package's entry points")
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports (* = inside a function), {len(found)} cycles, {len(upward)} upward imports")
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main())
