"""The shape of the package: the config is a leaf, modules import each other without cycles, functions stay short."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "fedpit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(node: ast.AST, module: str, is_package: bool):
    """Every fedpit module ``node`` imports, at any depth (inside functions too), except under TYPE_CHECKING."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield from _imports(sub, module, is_package)
            continue
        if isinstance(child, ast.Import):
            yield from (a.name for a in child.names if a.name in MODULES)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (child.level - 1)]
                base = ".".join(pkg + ([child.module] if child.module else []))
            for a in child.names:
                if f"{base}.{a.name}" in MODULES:
                    yield f"{base}.{a.name}"
                elif base in MODULES:
                    yield base
        yield from _imports(child, module, is_package)


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = set(_imports(tree, name, path.name == "__init__.py")) - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_importing_the_config_loads_no_torch_and_no_algorithm():
    code = (
        "import sys, fedpit.config; bad = [m for m in ('torch', 'fedpit.algorithms', 'fedpit.selfgen') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_cycle_finder_finds_a_cycle_and_reads_relative_imports():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = _graph()
    assert "fedpit.algorithms.base" in graph["fedpit.algorithms.fedit"]  # from .base import ...
    assert "fedpit.federation" in graph["fedpit.flower.server_app"]  # from ..federation import ...
    assert "fedpit.algorithms.fedit" in graph["fedpit.algorithms.cenit"]  # from . import fedit


def test_no_import_cycle_among_fedpit_modules():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_runtimes_are_siblings_over_the_federation_core():
    graph = _graph()
    flower = [m for m in graph if m.startswith("fedpit.flower")]
    assert not any("fedpit.runner" in graph[m] for m in flower)
    assert "fedpit.federation" in graph["fedpit.runner"]


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long
