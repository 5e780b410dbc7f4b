"""The import graph of the package keeps the data path straight and the axes apart.

Read from the source (every `import`, including those inside functions): no import cycle between modules; no
plugin imports a plugin module of another axis (it may use that axis's registry and base in its `__init__`); the
core never imports a plugin module (it reaches plugins through the registries); no module edits `sys.path`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import bench

ROOT = Path(bench.__file__).parent
AXIS_PACKAGES = ("bench.attacks", "bench.compressions", "bench.runtimes", "bench.recipes")


def module_files() -> dict[str, Path]:
    files = {}
    for path in ROOT.rglob("*.py"):
        parts = ["bench", *path.relative_to(ROOT).with_suffix("").parts]
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                # a module importing its own parent package is how Python loads it, not a dependency
                if target in files and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def axis_of(module: str) -> str | None:
    return next((a for a in AXIS_PACKAGES if module == a or module.startswith(a + ".")), None)


def is_plugin_module(module: str) -> bool:
    return axis_of(module) not in (None, module)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_the_modules_and_their_imports():
    graph = import_graph()
    assert {"bench.pipeline", "bench.attacks.pgd", "bench.runtimes.onnxruntime"} <= set(graph)
    assert "bench.registry" in graph["bench.attacks"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_no_plugin_imports_a_plugin_of_another_axis():
    bad = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if is_plugin_module(module)
        for target in targets
        if is_plugin_module(target) and axis_of(target) != axis_of(module)
    ]
    assert bad == []


def test_the_core_reaches_plugins_through_the_registries_only():
    bad = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if axis_of(module) is None
        for target in targets
        if is_plugin_module(target)
    ]
    assert bad == []


def test_no_module_edits_sys_path():
    edits = [
        f"{path.relative_to(ROOT.parent)}:{node.lineno}"
        for path in module_files().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    ]
    assert edits == []
