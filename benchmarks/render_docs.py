"""Render the results tables and figures in README.md and docs/*.md from benchmarks/results/*.json.

A table is written between markers, and only there::

    <!-- results:FILE:TABLE -->
    (rendered: the table, then one line naming the file, the date, the machine and the command)
    <!-- /results -->

and a single figure in prose between ``<!-- value:FILE:KEY -->`` and ``<!-- /value -->``. FILE is a results file's
name without ``.json``; TABLE and KEY name one of its ``tables`` or ``values`` (see ``results.py`` for the layout).
Column names and number formats come from the results file, never from the markdown.

    .venv/bin/python benchmarks/render_docs.py           # rewrite what lies between the markers
    .venv/bin/python benchmarks/render_docs.py --check   # exit 1, naming each marker, if any differs from its file
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TABLE_RE = re.compile(r"<!-- results:([\w.-]+):([\w.-]+) -->\n(.*?)<!-- /results -->", re.S)
VALUE_RE = re.compile(r"<!-- value:([\w.-]+):([\w./-]+) -->(.*?)<!-- /value -->", re.S)
PLACEHOLDER_RE = re.compile(r"\[\[([\w.-]+:[\w./-]+)\]\]")  # a figure inside a caption or note: [[FILE:REF]]


class RenderError(Exception):
    """A marker that names a missing file, table or value, or a cell that cannot be formatted."""


def documents(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


@cache
def load(name: str, results: Path = RESULTS) -> dict:
    path = results / f"{name}.json"
    if not path.is_file():
        raise RenderError(f"no results file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return json.loads(path.read_text(encoding="utf-8"))


def duration(seconds: float) -> str:
    s = round(float(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {s:02d} s" if m else f"{s} s"


def fmt(value, spec: str | None) -> str:
    """One cell or figure as text: ``None`` is ``-``; a dict is formatted by its own or the column's pattern."""
    if isinstance(value, dict) and "ref" in value:
        target, own = resolve(value["ref"])
        if value.get("format") and isinstance(target, dict):  # the referring cell's pattern wins over the target's
            target = {k: v for k, v in target.items() if k not in ("format", "bold")}
        return fmt(target, value.get("format") or own)
    if value is None:
        return "-"
    if isinstance(value, dict):
        spec = value.get("format", spec)
        if not spec:
            raise RenderError(f"a structured cell {value} needs a format")
        try:
            text = spec.format(**value)
        except (KeyError, IndexError, ValueError) as e:
            raise RenderError(f"cell {value}: format {spec!r} does not fit ({e})") from None
        return f"**{text}**" if value.get("bold") else text
    if spec == "duration":
        return duration(value)
    if isinstance(value, str):  # text takes only a plain "{}" pattern (e.g. "`{}`"), never a number format
        return spec.format(value) if spec and "{}" in spec else value
    return spec.format(value) if spec else str(value)


def resolve(ref: str) -> tuple:
    """A reference to one figure -> (the value, its format).

    ``FILE:KEY`` is ``values[KEY]`` of that results file; ``FILE:TABLE/ROW/COLUMN`` is the cell of the row whose
    ``id`` is ROW (formatted as its column is). Either may end in ``.FIELD`` to take one field of a structured value.
    """
    name, _, key = ref.partition(":")
    key, _, field = key.partition(".")
    doc = load(name)
    if "/" in key:
        value, spec = _table_cell(doc, name, key)
    else:
        if key not in doc.get("values", {}):
            raise RenderError(f"{name}.json has no value '{key}' (referenced as '{ref}')")
        entry = doc["values"][key]
        value, spec = (
            (entry["value"], entry.get("format")) if isinstance(entry, dict) and "value" in entry else (entry, None)
        )
    if isinstance(value, dict) and "ref" in value:
        override = value.get("format")
        value, spec = resolve(value["ref"])
        spec = override or spec
    if field:
        if not isinstance(value, dict) or field not in value:
            raise RenderError(f"'{ref}': no field '{field}'")
        return value[field], None
    return value, spec


def _table_cell(doc: dict, name: str, key: str) -> tuple:
    table_name, row_id, column = (key.split("/") + ["", ""])[:3]
    table = doc.get("tables", {}).get(table_name)
    rows = [r for r in (table or {}).get("rows", []) if r.get("id") == row_id]
    cols = [c for c in (table or {}).get("columns", []) if c["key"] == column]
    if not rows or not cols:
        raise RenderError(f"{name}.json has no cell '{key}' (table/row id/column)")
    return rows[0].get(column), cols[0].get("format")


def fill(text: str) -> str:
    """A caption or note with its ``[[FILE:REF]]`` figures written out."""
    return PLACEHOLDER_RE.sub(lambda m: fmt(*resolve(m[1])), text)


def cell_text(row: dict, col: dict) -> str:
    text = fmt(row.get(col["key"]), col.get("format"))
    if col["key"] in row.get("bold", ()):
        text = f"**{text}**"
    return text.replace("|", "\\|").replace("\n", " ")


def source_line(doc: dict, table: dict, name: str, page: Path) -> str:
    m = doc.get("machine") or {}
    where = m.get("summary") or ", ".join(
        str(x) for x in (m.get("cpu"), m.get("cores") and f"{m['cores']} cores", m.get("gpu") or "no GPU") if x
    )
    link = os.path.relpath(RESULTS / f"{name}.json", page.parent).replace(os.sep, "/")
    parts = [f"[`{name}.json`]({link})", str(doc.get("date", "")).split(" ")[0], where]
    source = doc.get("source") or {}
    if source.get("view_of"):
        parts.append("drawn from " + ", ".join(f"`{f}`" for f in source["view_of"]))
    elif source:
        parts.append("transcribed, not re-run")
    command = table.get("command", doc.get("command"))
    line = " · ".join(p for p in parts if p)
    return f"<sub>{line}<br>`{command}`</sub>" if command else f"<sub>{line}</sub>"


def render_table(name: str, table_name: str, page: Path) -> str:
    """The markdown between a table's markers: caption, table, source line."""
    doc = load(name)
    table = doc.get("tables", {}).get(table_name)
    if table is None:
        raise RenderError(f"{name}.json has no table '{table_name}'")
    cols = table["columns"]
    lines = []
    if table.get("caption"):
        lines += [fill(table["caption"]), ""]
    lines.append("| " + " | ".join(c["header"] for c in cols) + " |")
    lines.append("|" + "|".join("---:" if c.get("align") == "right" else "---" for c in cols) + "|")
    for row in table["rows"]:
        lines.append("| " + " | ".join(cell_text(row, c) for c in cols) + " |")
    if table.get("note"):
        lines += ["", fill(table["note"])]
    lines += ["", source_line(doc, table, name, page)]
    return "\n".join(lines) + "\n"


def render_value(name: str, key: str) -> str:
    value, spec = resolve(f"{name}:{key}")
    return fmt(value, spec)


def render_text(text: str, page: Path) -> str:
    """``text`` with every marker's contents rendered from its results file."""
    text = TABLE_RE.sub(
        lambda m: f"<!-- results:{m[1]}:{m[2]} -->\n{render_table(m[1], m[2], page)}<!-- /results -->", text
    )
    return VALUE_RE.sub(lambda m: f"<!-- value:{m[1]}:{m[2]} -->{render_value(m[1], m[2])}<!-- /value -->", text)


def markers(text: str) -> list[tuple[str, str, str]]:
    """Every (kind, file, name) a page's markers point at."""
    return [("table", m[1], m[2]) for m in TABLE_RE.finditer(text)] + [
        ("value", m[1], m[2]) for m in VALUE_RE.finditer(text)
    ]


def differences(pages: list[Path]) -> list[str]:
    """One line per marker whose contents differ from what its file gives (or that names nothing)."""
    out = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        where = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
        for kind, regex in (("table", TABLE_RE), ("value", VALUE_RE)):
            for m in regex.finditer(text):
                try:
                    want = render_table(m[1], m[2], page) if kind == "table" else render_value(m[1], m[2])
                except RenderError as e:
                    out.append(f"{where}: {kind} {m[1]}:{m[2]}: {e}")
                    continue
                if m[3] != want:
                    out.append(f"{where}: {kind} {m[1]}:{m[2]} differs from its results file")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if any marker differs from its file")
    args = ap.parse_args(argv)
    pages = documents()
    if args.check:
        diffs = differences(pages)
        for line in diffs:
            print(line, file=sys.stderr)
        print(f"render_docs: {len(diffs)} of the markers in {len(pages)} pages differ" if diffs else "render_docs: ok")
        return 1 if diffs else 0
    try:
        for page in pages:
            text = page.read_text(encoding="utf-8")
            new = render_text(text, page)
            if new != text:
                page.write_text(new, encoding="utf-8")
                print(f"rendered {page.relative_to(ROOT)}")
    except RenderError as e:
        print(f"render_docs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
