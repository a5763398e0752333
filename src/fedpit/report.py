"""Turn a ``results.json`` of an experiment (compare or sweep) into ``report.md``, ``report.html`` and PNG plots.

``results.json`` holds ``records`` (one per run, model and evaluation: method, seed, setting, model kind and metrics)
and ``curves`` (per run: train loss, held-out loss and extraction leakage per round). Tables show mean and standard
deviation over seeds.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import DataError, FedpitError

METRICS = [  # (key, column title, higher is better)
    ("rouge_l", "Rouge-L", True),
    ("cosine", "MiniLM cosine", True),
    ("reference_loss", "ref. loss", False),
    ("judge_wt", "judge WT %", True),
    ("judge_win", "win %", True),
    ("judge_tie", "tie %", True),
    ("judge_loss", "lose %", False),
    ("leak_rouge_l", "leakage Rouge-L", False),
    ("leak_exact", "leakage exact", False),
    ("leak_prefix_exact", "leakage 50-token", False),
    ("leak_floor_rouge_l", "backbone leakage Rouge-L", False),
    ("wall_s", "wall s", False),
]


def _finite(xs):
    return [x for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]


def aggregate(records: list[dict]) -> list[dict]:
    """Mean and std over seeds for every (setting, method, model)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r.get("setting", ""), r["algorithm"], r["model"])].append(r)
    rows = []
    for (setting, algo, model), rs in groups.items():
        row = {"setting": setting, "algorithm": algo, "model": model, "seeds": sorted({r["seed"] for r in rs})}
        for key, _, _ in METRICS:
            vals = _finite(r.get(key) for r in rs)
            if vals:
                row[key] = float(np.mean(vals))
                row[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    return rows


def _columns(rows: list[dict]) -> list[tuple[str, str, bool]]:
    return [m for m in METRICS if any(m[0] in r for r in rows)]


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    v, sd = row[key], row.get(key + "_std", 0.0)
    digits = 1 if key.startswith("judge") or key == "wall_s" else 3
    return f"{v:.{digits}f} ± {sd:.{digits}f}" if len(row["seeds"]) > 1 else f"{v:.{digits}f}"


def markdown_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    has_setting = any(r["setting"] for r in rows)
    head = (["setting"] if has_setting else []) + ["method", "model", "seeds"] + [c[1] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([r["setting"]] if has_setting else []) + [r["algorithm"], r["model"], str(len(r["seeds"]))]
        lines.append("| " + " | ".join(cells + [_cell(r, c[0]) for c in cols]) + " |")
    return "\n".join(lines)


def html_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    has_setting = any(r["setting"] for r in rows)
    head = (["setting"] if has_setting else []) + ["method", "model", "seeds"] + [c[1] for c in cols]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cells = ([r["setting"]] if has_setting else []) + [r["algorithm"], r["model"], str(len(r["seeds"]))]
        cells += [_cell(r, c[0]) for c in cols]
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def _plot_bars(rows: list[dict], key: str, title: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if key in r]
    if not rows:
        return False
    labels = [f"{r['algorithm']}\n{r['model']}" + (f"\n{r['setting']}" if r["setting"] else "") for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows)), 3.6))
    ax.bar(
        range(len(rows)),
        [r[key] for r in rows],
        yerr=[r.get(key + "_std", 0) for r in rows],
        capsize=3,
        color="#4c72b0",
    )
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _plot_curves(curves: list[dict], key: str, title: str, ylabel: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method: dict[str, list[list[float]]] = defaultdict(list)
    for c in curves:
        ys = c.get(key) or []
        if any(isinstance(y, (int, float)) for y in ys):
            label = c["algorithm"] + (f" ({c['setting']})" if c.get("setting") else "")
            by_method[label].append([y if isinstance(y, (int, float)) else np.nan for y in ys])
    if not by_method:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, runs in sorted(by_method.items()):
        width = max(len(r) for r in runs)
        arr = np.array([r + [np.nan] * (width - len(r)) for r in runs], dtype=float)
        start = 0 if key == "test_loss" else 1
        ax.plot(range(start, start + width), np.nanmean(arr, axis=0), marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _number_or_none(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_records(path: Path, records: list) -> None:
    """Each record: an object with algorithm, model, seed, an optional setting and numeric metrics."""
    for i, r in enumerate(records, 1):
        where = f"record {i}"
        if not isinstance(r, dict):
            raise DataError(path, f"expected an object, got {type(r).__name__}", record=where)
        for key, kind in (("algorithm", str), ("model", str), ("seed", int)):
            if key not in r:
                raise DataError(path, "missing required field", record=where, field=key)
            if not isinstance(r[key], kind) or isinstance(r[key], bool):
                raise DataError(path, f"expected {kind.__name__}, got {type(r[key]).__name__}", record=where, field=key)
        if not isinstance(r.get("setting", ""), str):
            raise DataError(path, f"expected text, got {type(r['setting']).__name__}", record=where, field="setting")
        for key, _, _ in METRICS:
            if not _number_or_none(r.get(key)):
                raise DataError(path, f"expected a number, got {type(r[key]).__name__}", record=where, field=key)


def _check_curves(path: Path, curves) -> None:
    """Each curve: an object with an algorithm and per-round lists of numbers."""
    if not isinstance(curves, list):
        raise DataError(path, f"expected a list, got {type(curves).__name__}", field="curves")
    for i, c in enumerate(curves, 1):
        where = f"curve {i}"
        if not isinstance(c, dict) or not isinstance(c.get("algorithm"), str):
            raise DataError(path, "expected an object with an 'algorithm'", record=where)
        if not isinstance(c.get("setting", ""), str):
            raise DataError(path, "expected text", record=where, field="setting")
        for key in ("train_loss", "test_loss", "leak_rouge_l"):
            ys = c.get(key, [])
            if not isinstance(ys, list) or not all(_number_or_none(y) for y in ys):
                raise DataError(path, "expected a list of numbers", record=where, field=key)


def load_results(results_file: str | Path) -> tuple[Path, dict]:
    """Read and check a ``results.json`` (or the experiment folder holding one): one-line DataErrors naming the
    file, record and field for anything a report cannot be made from, including an experiment with no records."""
    path = Path(results_file)
    if path.is_dir():
        if not (path / "results.json").is_file():
            raise DataError(path, "is a folder without a results.json (pass an experiment folder or its results.json)")
        path = path / "results.json"
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(path, f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(
            path, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg} (a results.json cut short?)"
        ) from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object with 'records', got {type(data).__name__}")
    if "records" not in data:
        raise DataError(path, "no 'records' (not a results.json written by fedpit compare or sweep)", field="records")
    records = data["records"]
    if not isinstance(records, list):
        raise DataError(path, f"expected a list, got {type(records).__name__}", field="records")
    if not records:
        raise DataError(
            path, "no records: no run of this experiment has been evaluated yet, nothing to report", field="records"
        )
    _check_records(path, records)
    _check_curves(path, data.get("curves", []))
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise DataError(path, f"expected an object, got {type(meta).__name__}", field="meta")
    for key in ("name", "command"):
        if not isinstance(meta.get(key, ""), (str, type(None))):
            raise DataError(path, f"expected text, got {type(meta[key]).__name__}", field=f"meta.{key}")
    return path, data


def write_report(results_file: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and plots next to ``results.json`` (or into ``out_dir``)."""
    results_file, data = load_results(results_file)
    out = Path(out_dir or results_file.parent)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write(results_file, data, out)
    except OSError as e:
        raise FedpitError(f"{out}: cannot write the report ({e.strerror or e})") from None


def _write(results_file: Path, data: dict, out: Path) -> dict[str, Path]:
    rows = aggregate(data.get("records", []))
    curves = data.get("curves", [])
    plots = {}
    for key, title, fname in (
        ("rouge_l", "Rouge-L vs reference (mean ± std over seeds)", "score.png"),
        ("judge_wt", "judge WT % (win + tie)", "judge_wt.png"),
    ):
        if _plot_bars(rows, key, title, out / fname):
            plots[title] = fname
    for key, title, ylabel, fname in (
        ("leak_rouge_l", "extraction leakage of the shared model", "Rouge-L of continuation", "leakage.png"),
        ("train_loss", "training loss", "loss", "train_loss.png"),
        ("test_loss", "held-out loss of the shared model", "loss", "test_loss.png"),
    ):
        if _plot_curves(curves, key, title, ylabel, out / fname):
            plots[title] = fname
    meta = data.get("meta", {})
    md = [f"# fedpit report: {meta.get('name', results_file.parent.name)}", ""]
    if meta.get("command"):
        md += ["Command:", "", f"    {meta['command']}", ""]
    for k in ("machine", "started", "wall_s", "test_set", "note"):
        if meta.get(k) is not None:
            md.append(f"- {k}: {meta[k]}")
    md += ["", markdown_table(rows), ""]
    md += [
        "Models: `shared` is the final global adapter; `private` is the mean over the clients' own adapters "
        "(methods that keep them). Leakage: training-data extraction attack on that model after the last round "
        "(higher = more leakage); for `private`, the mean over the clients' adapters; the bare backbone's "
        "score on the same targets is the floor.",
        "",
    ]
    md += [f"![{t}]({f})" for t, f in plots.items()]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    body = [f"<h1>{html.escape(md[0][2:])}</h1>"]
    if meta.get("command"):
        body.append(f"<pre>{html.escape(meta['command'])}</pre>")
    body.append(html_table(rows))
    body += [
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(t)}"><figcaption>{html.escape(t)}</figcaption></figure>'
        for t, f in plots.items()
    ]
    (out / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>fedpit report</title><style>body{font-family:sans-serif}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style>"
        + "\n".join(body),
        encoding="utf-8",
    )
    return {"md": out / "report.md", "html": out / "report.html", **{f: out / f for f in plots.values()}}
