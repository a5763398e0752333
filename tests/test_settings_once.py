"""Each setting is declared once: in ``config.py``. Everything else reads it from the typed config.

Two checks over the source with ``ast``: every config key is read somewhere outside ``config.py`` (a key nobody
reads is a switch that does nothing), and no dataclass outside ``config.py`` copies a config section's fields by hand
(the way ``LoraSpec``, ``LocalBudget`` and ``MethodParams`` once did).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from fedpit.config import Config

PKG = Path(__file__).resolve().parents[1] / "src" / "fedpit"
SOURCES = {p: p.read_text(encoding="utf-8") for p in PKG.rglob("*.py") if p.name != "config.py"}


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])}


def _attribute_reads(tree: ast.AST) -> set[str]:
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}  # e.g. the section's class in a signature
    # getattr(section, "name") and f"fedpit.{key}"-style lookups count as reads too
    names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return names


def _field_pairs(cls_node: ast.ClassDef) -> set[tuple[str, str]]:
    return {
        (n.target.id, ast.unparse(n.annotation))
        for n in cls_node.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }


# Records that share field names with a section without copying its settings, each with the reason.
NOT_COPIES = {
    "Partition": "the partition a run made (partition.json): its method and client count as made, not as configured",
    "EvalOptions": "`fedpit evaluate`'s options for a test file it names (--test, --format, --limit), not data.*",
}


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if (isinstance(target, ast.Name) and target.id == "dataclass") or (
            isinstance(target, ast.Attribute) and target.attr == "dataclass"
        ):
            return True
    return False


def test_every_config_key_is_read_outside_config_py():
    trees = {p: ast.parse(src) for p, src in SOURCES.items()}
    reads = {p: _attribute_reads(t) for p, t in trees.items()}
    unread = []
    for section, cls in _sections().items():
        # files that touch the section at all: by its name (cfg.selfgen) or its class (s: SelfGenSettings)
        users = [p for p, names in reads.items() if section in names or cls.__name__ in names]
        for f in dataclasses.fields(cls):
            if not any(f.name in reads[p] for p in users):
                unread.append(f"{section}.{f.name}")
    top = [f.name for f in dataclasses.fields(Config) if f.name not in _sections()]
    unread += [k for k in top if not any(k in names for names in reads.values())]
    assert not unread, f"config keys nobody reads: {unread}"


def test_no_dataclass_outside_config_py_repeats_a_config_section():
    config_tree = ast.parse((PKG / "config.py").read_text(encoding="utf-8"))
    sections = {n.name: _field_pairs(n) for n in ast.walk(config_tree) if isinstance(n, ast.ClassDef)}
    copies = []
    for path, src in SOURCES.items():
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.ClassDef) and _is_dataclass(node) and node.name not in NOT_COPIES:
                mine = _field_pairs(node)
                for name, theirs in sections.items():
                    shared = mine & theirs
                    if len(shared) >= 2:
                        copies.append(f"{path.name}:{node.name} repeats {name}: {sorted(f for f, _ in shared)}")
    assert not copies, copies


def test_the_copy_detector_finds_a_hand_copied_section():
    fake = ast.parse("@dataclass\nclass Spec:\n    r: int = 16\n    alpha: int = 32\n    other: str = ''\n")
    node = next(n for n in ast.walk(fake) if isinstance(n, ast.ClassDef))
    config_tree = ast.parse((PKG / "config.py").read_text(encoding="utf-8"))
    lora = next(n for n in ast.walk(config_tree) if isinstance(n, ast.ClassDef) and n.name == "LoraConfig")
    assert _is_dataclass(node) and len(_field_pairs(node) & _field_pairs(lora)) == 2
