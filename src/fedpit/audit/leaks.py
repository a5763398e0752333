"""Find canary secrets in what a run wrote: every client's local outputs of every round (above all its synthetic
data, ``clients/client_K/round_NNN/synthetic.jsonl``, which trains what FedPIT uploads) and every metrics row
(what the server received beside the adapters).

A hit is a secret standing as a number of its own (not inside a longer one) in a text field: numbers that are
measurements (token counts, bytes) are not text and are not searched. Each hit names the file, the line, the field
(a JSON path), the canary and its owner, and whether the canary's patient is named in the same record (line): strong
evidence that the canary itself, not a coincidental number, leaked. The secret itself is never printed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from ..rundir import RunDir
from .canaries import Canary


def _strings(value, path: str = "") -> Iterator[tuple[str, str]]:
    """Every text value in a JSON document, with its path (``output``, ``rows[3].instruction``)."""
    if isinstance(value, str):
        yield path or "$", value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def files_to_scan(run_dir: Path, client: int | None = None) -> list[Path]:
    """Client outputs (``clients/client_K/round_NNN/**``, JSON and JSONL) and ``metrics.jsonl``; with ``client``,
    that client's outputs only (and the metrics rows, when the folder has them)."""
    rd = RunDir(run_dir)
    found = [p for p in rd.client_outputs(client) if p.suffix in (".json", ".jsonl")]
    if rd.metrics_file.is_file():
        found.append(rd.metrics_file)
    return sorted(found)


def _units(path: Path) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """(line number, [(field, text)]) of a JSONL file (JSON files as one unit, line 1); text that is not JSON is
    searched whole."""
    text = path.read_text(encoding="utf-8", errors="replace")
    units = enumerate(text.splitlines(), 1) if path.suffix == ".jsonl" else [(1, text)]
    for n, unit in units:
        if not unit.strip():
            continue
        try:
            yield n, list(_strings(json.loads(unit)))
        except ValueError:
            yield n, [("(raw text)", unit)]


def scan(run_dir: str | Path, canaries: list[Canary], client: int | None = None) -> list[dict]:
    """Every place a canary's secret appears in the run's client outputs and metrics rows (see the module doc)."""
    if not canaries:
        return []
    run_dir = Path(run_dir)
    by_secret = {c.secret: c for c in canaries}
    pattern = re.compile(r"(?<!\d)(" + "|".join(sorted(map(re.escape, by_secret), key=len, reverse=True)) + r")(?!\d)")
    hits = []
    for path in files_to_scan(run_dir, client):
        for line, fields in _units(path):
            record = "\n".join(text for _, text in fields)
            for name, text in fields:
                for secret in dict.fromkeys(m.group(1) for m in pattern.finditer(text)):
                    c = by_secret[secret]
                    hits.append(
                        {
                            "canary": c.index,
                            "owner": c.client,
                            "file": str(path.relative_to(run_dir)),
                            "line": line,
                            "field": name,
                            "names_patient": c.patient in record,
                        }
                    )
    return hits


def describe(hit: dict) -> str:
    """One printed line for a hit (without the secret)."""
    where = f"{hit['file']} line {hit['line']} ({hit['field']})"
    context = ", beside the canary's patient name" if hit["names_patient"] else ""
    return f"leak: canary {hit['canary']}'s secret (client {hit['owner']}'s data) found in {where}{context}"


__all__ = ["describe", "files_to_scan", "scan"]
