"""fedpit uses Flower through its public API only.

Every file under ``src/`` is read with ``ast``: it may import from Flower only ``flwr.app``,
``flwr.clientapp``, ``flwr.serverapp`` and ``flwr.simulation`` (and their submodules), and it may not change a Flower
module: no assignment (plain, augmented or annotated) to an attribute of a name bound to a Flower module, no
``setattr`` or ``delattr`` on one, no ``importlib.import_module``/``__import__`` of another part of Flower.
Flower's commands (``flower-superlink``, ``flower-supernode``, ``flwr``, ...) run as processes, which this does not
restrict.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PUBLIC = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.simulation")


def _is_flwr(module: str) -> bool:
    return module == "flwr" or module.startswith("flwr.")


def _public(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PUBLIC)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _root(node: ast.AST) -> str | None:
    """The name an attribute or subscript chain starts from (``a`` of ``a.b[0].c``)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _targets(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        out = []
        for t in node.targets:
            out += list(t.elts) if isinstance(t, (ast.Tuple, ast.List)) else [t]
        return out
    if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        return [node.target]
    if isinstance(node, ast.Delete):
        return list(node.targets)
    return []


def _flwr_names(tree: ast.AST) -> set[str]:
    """Names the module binds to a Flower module: ``import flwr.x`` binds ``flwr``, ``import flwr.x as y`` binds
    ``y``, ``from flwr.x import y`` binds ``y`` when ``flwr.x.y`` is a module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_flwr(a.name):
                    names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_flwr(node.module):
            for a in node.names:
                if _is_module(f"{node.module}.{a.name}"):
                    names.add(a.asname or a.name)
    return names


def violations(source: str, filename: str = "<src>") -> list[str]:
    """Where ``source`` reaches past Flower's public API, one line each (empty: it does not)."""
    tree = ast.parse(source, filename)
    out = []

    def bad(node: ast.AST, what: str) -> None:
        out.append(f"{filename}:{node.lineno}: {what}")

    flwr_names = _flwr_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _is_flwr(a.name) and not _public(a.name):
                    bad(node, f"import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _is_flwr(node.module):
            for a in node.names:
                full = node.module if _public(node.module) else f"{node.module}.{a.name}"
                if not _public(full):
                    bad(node, f"from {node.module} import {a.name}")
        elif isinstance(node, ast.Call):
            fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            first = node.args[0] if node.args else None
            if fn in ("setattr", "delattr") and first is not None and _root(first) in flwr_names:
                bad(node, f"{fn}() on a Flower module")
            if fn in ("import_module", "__import__") and isinstance(first, ast.Constant):
                name = str(first.value)
                if _is_flwr(name) and not _public(name):
                    bad(node, f"{fn}({name!r})")
        for t in _targets(node):
            if isinstance(t, (ast.Attribute, ast.Subscript)) and _root(t) in flwr_names:
                bad(node, f"assignment to {ast.unparse(t)} (an attribute of a Flower module)")
    return out


def test_src_uses_flowers_public_api_only():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20 and any(f.name == "client_app.py" for f in files)
    found = [v for f in files for v in violations(f.read_text(encoding="utf-8"), str(f.relative_to(SRC.parent)))]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "import flwr",
        "import flwr.proto.node_pb2",
        "from flwr.supercore.task_identity import TaskIdentity",
        "from flwr.common.serde import context_from_proto",
        "from flwr import supernode",
        "from flwr.superlink.grid import http_grid",
        "from flwr.app import Message\nimport flwr.app\nflwr.app.Message = None",
        "import flwr.app as fa\nfa.x = 1",
        "import flwr.app as fa\nfa.x += 1",
        "import flwr.app as fa\nfa.x: int = 1",
        "import flwr.app as fa\na, fa.x = 1, 2",
        "from flwr import app\napp.Message = None",
        "from flwr.serverapp import strategy\nstrategy.FedAvg = None",
        "from flwr.serverapp import strategy\nsetattr(strategy, 'FedAvg', None)",
        "import flwr.clientapp\ndelattr(flwr.clientapp, 'ClientApp')",
        "import importlib\nimportlib.import_module('flwr.supernode.start_client_internal')",
        "__import__('flwr.proto')",
    ],
)
def test_the_check_finds_internals_and_patches(source):
    assert violations(source), source


@pytest.mark.parametrize(
    "source",
    [
        "from flwr.app import ArrayRecord, Message\nfrom flwr.clientapp import ClientApp",
        "from flwr.serverapp import Grid, ServerApp\nfrom flwr.serverapp.strategy import Strategy",
        "from flwr.simulation import run_simulation",
        "from flwr import app, clientapp, serverapp, simulation",
        "import flwr.app\nimport flwr.serverapp.strategy as s",
        "from flwr.app import Message\nm = Message\nm.x = 1",  # a class bound by name: not a module
        "from . import executor\nexecutor.CONNECT_WAIT_S = 1",  # fedpit's own module
        "import importlib\nimportlib.import_module('flwr.app')",
    ],
)
def test_the_check_passes_the_public_api(source):
    assert not violations(source), violations(source)
