"""Turn a ``results.json`` of an experiment (compare or sweep) into ``report.md``, ``report.html`` and PNG plots.

``results.json`` holds ``records`` (one per run, model and evaluation: method, seed, setting, model kind and metrics)
and ``curves`` (per run: train loss, held-out loss and extraction leakage per round). Tables show mean and standard
deviation over seeds.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dominance import DOMINATED, DOMINATES, OUT_OF_RANGE, TIES, Point, Verdict, overall, verdict
from .errors import DataError, FedpitError
from .extras import available, install_hint

log = logging.getLogger("fedpit.report")
NO_PLOTS = f"Plots are not drawn: they need the [plots] extra (matplotlib): {install_hint('plots')}."


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None without the ``plots`` extra (the report is then text only)."""
    if not available("matplotlib"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    ("mia_ref_auc", "MIA AUC (ref)", False),
    ("canary_exposure_mean", "canary exposure bits", False),
    ("audit_excess_rouge_l", "audit extraction above backbone", False),
    ("dp_epsilon", "DP ε spent", False),
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
            _mean_std(row, rs, key)
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
    plt = _pyplot()
    if plt is None:
        return False

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
    plt = _pyplot()
    if plt is None:
        return False

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
    if _is_benchmark_results(data):
        raise DataError(path, "holds benchmark accuracies: report them with fedpit report --benchmarks")
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


def write_report(
    results_file: str | Path, out_dir: str | Path | None = None, *, benchmarks: str | None = None
) -> dict[str, Path]:
    """Write report.md, report.html and plots next to ``results.json`` (or into ``out_dir``). ``benchmarks`` ("all"
    or a list of sets) adds the multiple-choice accuracies saved beside the experiment; given a benchmark
    results.json of ``fedpit evaluate --benchmarks``, the report holds those alone. Without ``benchmarks``, an
    experiment's saved accuracies are shown when there are any (rebuilding a report never drops them)."""
    bench = data = None
    if benchmarks is None and _beside(results_file).is_file():
        benchmarks = "all"
    if benchmarks is not None:
        bench_file, own, bench = load_benchmark_results(results_file, benchmarks)
    if bench is not None and own:
        results_file = bench_file
    else:
        results_file, data = load_results(results_file)
    out = Path(out_dir or results_file.parent)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _write(results_file, data, out, bench)
    except OSError as e:
        raise FedpitError(f"{out}: cannot write the report ({e.strerror or e})") from None


def _plots(rows: list[dict], curves: list[dict], out: Path) -> dict[str, str]:
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
    return plots


def _write(results_file: Path, data: dict | None, out: Path, bench: dict | None = None) -> dict[str, Path]:
    """report.md and report.html: the experiment's table, notes and plots (when ``data``), its privacy-utility
    frontier (when its rows measure leakage), and the benchmark accuracies (when ``bench``)."""
    meta = (data or {}).get("meta", {})
    md = [f"# fedpit report: {meta.get('name', results_file.parent.name)}", ""]
    body = [f"<h1>{html.escape(md[0][2:])}</h1>"]
    if meta.get("command"):
        md += ["Command:", "", f"    {meta['command']}", ""]
        body.append(f"<pre>{html.escape(meta['command'])}</pre>")
    for k in ("machine", "started", "wall_s", "test_set", "note"):
        if meta.get(k) is not None:
            md.append(f"- {k}: {meta[k]}")
    plots: dict[str, str] = {}
    if data is not None:
        rows = aggregate(data.get("records", []))
        plots = _plots(rows, data.get("curves", []), out)
        md += ["", markdown_table(rows), "", MODELS_NOTE, ""]
        md += [f"![{t}]({f})" for t, f in plots.items()]
        body.append(html_table(rows))
        body += [_figure(f, t) for t, f in plots.items()]
    sections = [frontier_section(data.get("records", []), out)] if data is not None else []
    sections += [benchmark_section(bench)] if bench is not None else []
    for sec in filter(None, sections):
        md += ([""] if md[-1] else []) + sec.markdown()
        body.append(sec.html())
        plots.update(sec.plots)
    if not available("matplotlib"):
        md += ["", NO_PLOTS]
        body.append(f"<p>{html.escape(NO_PLOTS)}</p>")
        log.warning("%s: %s", out / "report.md", NO_PLOTS)
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>fedpit report</title><style>body{font-family:sans-serif}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style>"
        + "\n".join(body),
        encoding="utf-8",
    )
    return {"md": out / "report.md", "html": out / "report.html", **{f: out / f for f in plots.values()}}


MODELS_NOTE = (
    "Models: `shared` is the final global adapter; `private` is the mean over the clients' own adapters "
    "(methods that keep them); `bare` is the untuned backbone. Leakage: training-data extraction attack on that model "
    "after the last round (higher = more leakage); for `private`, the mean over the clients' adapters; the bare "
    "backbone's score on the same targets is the floor."
)


def _figure(fname: str, title: str) -> str:
    t = html.escape(title)
    return f'<figure><img src="{html.escape(fname)}" alt="{t}"><figcaption>{t}</figcaption></figure>'


@dataclass
class Section:
    """A report section as blocks, rendered to Markdown and HTML alike: ("h", text), ("p", text),
    ("table", header, rows) or ("img", file, title); ``plots`` are the images it wrote (title -> file)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)

    def markdown(self) -> list[str]:
        md = [f"## {self.title}", ""]
        for kind, *rest in self.blocks:
            if kind == "h":
                md += [f"### {rest[0]}", ""]
            elif kind == "p":
                md += [rest[0], ""]
            elif kind == "table":
                head, rows = rest
                md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                md += ["| " + " | ".join(r) + " |" for r in rows] + [""]
            else:
                md += [f"![{rest[1]}]({rest[0]})", ""]
        return md

    def html(self) -> str:
        out = [f"<h2>{html.escape(self.title)}</h2>"]
        for kind, *rest in self.blocks:
            if kind == "h":
                out.append(f"<h3>{html.escape(rest[0])}</h3>")
            elif kind == "p":
                out.append(f"<p>{html.escape(rest[0])}</p>")
            elif kind == "table":
                head, rows = rest
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            else:
                out.append(_figure(rest[0], rest[1]))
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# The privacy-utility frontier: every (method, setting, model) placed by utility against each privacy measure, the
# baselines drawn as curves, and the verdicts (fedpit.dominance): which methods are dominated, and by what.

FRONTIER_ORDER = ("fedit", "fedpit", "fedpit-mix", "fedmit", "locit", "cenit", "fedit-dp", "backbone")
FRONTIER_UTILITY = (  # (key, title, higher is better); the first is the primary utility
    ("reference_loss", "held-out reference loss", False),
    ("rouge_l", "Rouge-L", True),
    ("cosine", "MiniLM cosine", True),
)
SHORT = {"reference_loss": "loss", "rouge_l": "Rouge-L", "cosine": "cosine"}
PRIVACY = (  # (key, title, axis label): lower is more private on every one
    ("mia_ref_auc", "membership inference AUC (reference-calibrated loss)", "MIA AUC, score ref (0.5 = chance)"),
    ("canary_exposure_mean", "canary exposure (mean)", "canary exposure, mean (bits)"),
    ("extraction_excess", "extraction Rouge-L above the backbone", "extraction Rouge-L above the backbone's"),
)
PRIVACY_DETAIL = (  # (key, column title): the other MIA scores and the canaries' details
    *((f"mia_{s}_auc", f"AUC {s}") for s in ("loss", "ref", "zlib")),
    *((f"mia_{s}_tpr10", f"TPR@10% FPR {s}") for s in ("loss", "ref", "zlib")),
    ("mia_ref_tpr1", "TPR@1% FPR ref"),
    ("canary_exposure_max", "exposure max"),
    ("canary_control_exposure_mean", "exposure of others' canaries"),
    ("dp_epsilon", "DP ε spent"),
)
BASELINES = (  # (curve, algorithm, knob key, how a point is named by its knob)
    ("FedIT turned down", "fedit", "federation.server_lr", "η={}"),
    ("FedIT with fewer local steps", "fedit", "train.local_steps", "{} local steps"),
    ("DP-SGD", "fedit-dp", "dp.target_epsilon", "ε={}"),
)
# the "do less" curves end in FedIT itself (eta 1, its own local steps) and the bare backbone (eta 0, no step)
CURVE_ENDS = {"federation.server_lr": (1.0, 0.0), "train.local_steps": (math.inf, 0.0)}


def _leak_excess(r: dict) -> float | None:
    """A row's extraction Rouge-L minus its own run's floor (the bare backbone on the same targets)."""
    leak, floor = r.get("leak_rouge_l"), r.get("leak_floor_rouge_l")
    return leak - floor if len(_finite([leak, floor])) == 2 else None


def _knob_name(setting: str) -> str | None:
    key, _, value = setting.partition("=")
    return next((fmt.format(value) for _, _, k, fmt in BASELINES if k == key), None)


def _point_label(algo: str, setting: str, model: str) -> str:
    if algo == "backbone":
        return "bare backbone"
    if setting.startswith("fedpit.beta="):
        return f"{algo} β={setting.split('=', 1)[1]} {model}"
    if setting.startswith("fedpit.teacher_mix="):  # the private model as teacher (fedpit frontier --teacher-mixes)
        return f"{algo} teacher_mix={setting.split('=', 1)[1]} {model}"
    if setting == "selfgen.accumulate=true":  # the teacher keeping every round's examples (--teacher-accumulate)
        return f"{algo} teacher accumulating {model}"
    if _knob_name(setting):
        return f"{algo} {_knob_name(setting)} {model}"
    return f"{algo} {model}" + (f" [{setting}]" if setting else "")


def _frontier_key(r: dict) -> tuple:
    algo, setting = r["algorithm"], r["setting"]
    value = setting.split("=", 1)[-1]
    try:
        num = float(value)
    except ValueError:
        num = math.inf
    rank = FRONTIER_ORDER.index(algo) if algo in FRONTIER_ORDER else len(FRONTIER_ORDER)
    return (rank, algo, setting.split("=", 1)[0], num, setting, r["model"] != "shared", r["model"])


def _pareto(rows: list[dict], pkey: str, key: str, higher: bool) -> list[dict]:
    """The points no other point beats: none has privacy as good or better and utility as good or better, with one
    of the two strictly better."""
    pts = [r for r in rows if key in r and pkey in r]

    def beats(q: dict, p: dict) -> bool:
        better = q[key] >= p[key] if higher else q[key] <= p[key]
        strict = q[pkey] < p[pkey] or q[key] != p[key]
        return q is not p and q[pkey] <= p[pkey] and better and strict

    return [p for p in pts if not any(beats(q, p) for q in pts)]


def _with_measures(r: dict, audited: bool) -> dict:
    """The record with its extraction excess: the audit's (paired per example) when the experiment was audited,
    else the run's attack minus its floor."""
    excess = r.get("audit_excess_rouge_l") if audited else _leak_excess(r)
    return dict(r, extraction_excess=excess) if excess is not None else dict(r)


def frontier_rows(records: list[dict]) -> list[dict]:
    """One point per (method, setting, model) whose rows measured privacy: each privacy measure (``PRIVACY``), its
    details and the utility measures, mean and sample std over seeds; ``front[privacy key]`` lists the utility
    measures on whose Pareto front the point lies against that measure."""
    audited = any("audit_excess_rouge_l" in r for r in records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        r = _with_measures(r, audited)
        if any(_finite([r.get(k)]) for k, _, _ in PRIVACY):
            groups[(r["algorithm"], r.get("setting", ""), r["model"])].append(r)
    rows = []
    for (algo, setting, model), rs in groups.items():
        row = {"algorithm": algo, "setting": setting, "model": model, "label": _point_label(algo, setting, model)}
        row["seeds"] = sorted({r["seed"] for r in rs})
        keys = [k for k, _, _ in PRIVACY] + [k for k, _ in PRIVACY_DETAIL] + [k for k, _, _ in FRONTIER_UTILITY]
        keys += ["mia_n_members", "mia_n_nonmembers", "canary_k", "canary_repeats"]
        for key in keys:
            _mean_std(row, rs, key)
        rows.append(row)
    rows.sort(key=_frontier_key)
    for r in rows:
        r["front"] = {k: [] for k, _, _ in PRIVACY if k in r}
    for pkey, _, _ in PRIVACY:
        for key, _, higher in FRONTIER_UTILITY:
            for r in _pareto(rows, pkey, key, higher):
                r["front"][pkey].append(key)
    return rows


def _mean_std(row: dict, rs: list[dict], key: str) -> None:
    vals = _finite(r.get(key) for r in rs)
    if vals:
        row[key] = float(np.mean(vals))
        row[key + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def baseline_curves(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Each baseline curve with points: (name, its shared-model rows in the order of the knob), the "do less"
    curves closed by FedIT itself and the bare backbone where the experiment has them."""
    fedit = next((r for r in rows if (r["algorithm"], r["setting"], r["model"]) == ("fedit", "", "shared")), None)
    bare = next((r for r in rows if r["algorithm"] == "backbone"), None)
    curves = []
    for name, algo, key, _ in BASELINES:
        pts = [
            (float(r["setting"].split("=", 1)[1]), r)
            for r in rows
            if r["algorithm"] == algo and r["setting"].startswith(f"{key}=") and r["model"] == "shared"
        ]
        if not pts:
            continue
        top, bottom = CURVE_ENDS.get(key, (None, None))
        pts += [(top, fedit)] if top is not None and fedit else []
        pts += [(bottom, bare)] if bottom is not None and bare else []
        curves.append((name, [r for _, r in sorted(pts, key=lambda t: t[0])]))
    return curves


def _spread(rows: list[dict], key: str):
    """A row's spread on ``key``: its own standard deviation over seeds, or for a one-seed row the pooled
    standard deviation of the trained rows with several seeds (0 when there are none). The bare backbone is left
    out of the pool: its rows repeat one evaluation of one model, whose spread says nothing about training noise."""
    multi = [
        (len(r["seeds"]) - 1, r[key + "_std"])
        for r in rows
        if len(r["seeds"]) > 1 and key + "_std" in r and r["algorithm"] != "backbone"
    ]
    dof = sum(d for d, _ in multi)
    pooled = math.sqrt(sum(d * s * s for d, s in multi) / dof) if dof else 0.0
    return lambda r: r.get(key + "_std", 0.0) if len(r["seeds"]) > 1 else pooled


def _as_point(r: dict, pkey: str, ukey: str, sx, sy, name: str = "") -> Point:
    return Point(name or r["label"], r[pkey], r[ukey], sx(r), sy(r))


def _curve_label(r: dict) -> str:
    """A curve point's name on its curve: its knob (η=0.5, ε=10, 2 local steps), FedIT or the bare backbone."""
    return _knob_name(r["setting"]) or ("bare backbone" if r["algorithm"] == "backbone" else "FedIT")


def frontier_verdicts(rows: list[dict], pkey: str, ukey: str, higher: bool) -> list[tuple[dict, dict[str, Verdict]]]:
    """Every method point (not the backbone, not a baseline's own point) with its verdict against each baseline
    curve it is not on, on ``pkey`` x ``ukey`` (:func:`fedpit.dominance.verdict`)."""
    sx, sy = _spread(rows, pkey), _spread(rows, ukey)
    curves = [(name, [r for r in pts if pkey in r and ukey in r]) for name, pts in baseline_curves(rows)]
    out = []
    for r in rows:
        if r["algorithm"] == "backbone" or pkey not in r or ukey not in r or _knob_name(r["setting"]):
            continue  # the reference, a point without this measure, or a baseline's own point
        p = _as_point(r, pkey, ukey, sx, sy)
        out.append(
            (
                r,
                {
                    name: verdict(p, [_as_point(q, pkey, ukey, sx, sy, _curve_label(q)) for q in pts], higher=higher)
                    for name, pts in curves
                    if pts and all(q is not r for q in pts)
                },
            )
        )
    return out


def _digits(key: str) -> int:
    return 2 if key.startswith("canary") else 3


def _frontier_cell(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    v, sd, d = row[key], row.get(key + "_std", 0.0), _digits(key)
    return f"{v:.{d}f} ± {sd:.{d}f}" if len(row["seeds"]) > 1 else f"{v:.{d}f}"


def _short(v: Verdict) -> str:
    """A verdict in a table cell whose column names the curve."""
    at = v.against.label if v.against is not None else ""
    if v.verdict == DOMINATED:
        return f"dominated by {at}"
    if v.verdict == DOMINATES:
        return f"dominates {at}"
    if v.verdict == TIES:
        return f"ties with {at} (" + ("equal" if v.means == "equal" else f"within noise; {v.means} on the means") + ")"
    return "no point in range"


def _points_table(rows: list[dict]) -> tuple:
    measures = [m for m in PRIVACY if any(m[0] in r for r in rows)]
    head = ["point", "seeds"] + [t for _, t, _ in measures] + [t for _, t, _ in FRONTIER_UTILITY]
    keys = [k for k, _, _ in measures] + [k for k, _, _ in FRONTIER_UTILITY]
    return ("table", head, [[r["label"], str(len(r["seeds"]))] + [_frontier_cell(r, k) for k in keys] for r in rows])


def _detail_blocks(rows: list[dict]) -> list[tuple]:
    """The other membership scores, TPR at low FPR and the canaries' details, with the counts behind them."""
    cols = [(k, t) for k, t in PRIVACY_DETAIL if any(k in r for r in rows)]
    if not cols:
        return []
    counts = lambda r: (  # noqa: E731
        (f"{r['mia_n_members']:.0f} / {r['mia_n_nonmembers']:.0f}" if "mia_n_members" in r else "-"),
        (f"{r['canary_k']:.0f} x {r['canary_repeats']:.0f}" if "canary_k" in r else "-"),
    )
    head = ["point"] + [t for _, t in cols] + ["MIA members / non-members", "canaries x copies"]
    table = [[r["label"]] + [_frontier_cell(r, k) for k, _ in cols] + list(counts(r)) for r in rows]
    return [
        ("h", "Privacy measures in detail"),
        ("table", head, table),
        (
            "p",
            "Membership inference: ROC AUC of each score (loss: the response loss; ref: minus the bare backbone's "
            "loss on the same example; zlib: over the response's compressed length) and the true-positive rate at "
            "10% (1% from 1,000 non-members on) false positives; a private row is the mean over the clients' models "
            "(each on its own members). Exposure of others' canaries: a client's model on the canaries it never saw "
            "(the control). The bare backbone's ref score is 0 for every example (AUC 0.5 by construction). DP ε "
            "spent: what a fedit-dp run spent (the largest over its clients; the target is in the point's name).",
        ),
    ]


def _verdict_rows(rows: list[dict], pkey: str, names: list[str]) -> list[list[str]]:
    ukey, _, higher = FRONTIER_UTILITY[0]
    others = [{id(r): v for r, v in frontier_verdicts(rows, pkey, k, h)} for k, _, h in FRONTIER_UTILITY[1:]]
    table = []
    for r, v in frontier_verdicts(rows, pkey, ukey, higher):
        rest = " / ".join(overall(list(o[id(r)].values())) if id(r) in o else "-" for o in others)
        cells = [r["label"], str(len(r["seeds"])), _frontier_cell(r, pkey), _frontier_cell(r, ukey)]
        cells += [_short(v[n]) if n in v else "-" for n in names]
        cells += [overall(list(v.values())) if v else "-", rest, ", ".join(SHORT[k] for k in r["front"][pkey]) or "-"]
        table.append(cells)
    return table


def _verdict_summary(rows: list[dict], pkey: str) -> str:
    """Which methods are dominated and by what, which tie within noise, which are ahead, which have no baseline."""
    ukey, utitle, higher = FRONTIER_UTILITY[0]
    groups: dict[str, list[str]] = defaultdict(list)
    for r, v in frontier_verdicts(rows, pkey, ukey, higher):
        if v:
            kind = overall(list(v.values()))
            why = "; ".join(x.text(n) for n, x in v.items() if x.verdict == kind)
            groups[kind].append(f"{r['label']} ({why})" if kind != OUT_OF_RANGE else r["label"])
    parts = [
        f"{title}: {', '.join(groups[kind])}."
        for kind, title in (
            (DOMINATED, "Dominated"),
            (TIES, "Tied within noise"),
            (DOMINATES, "Not dominated, ahead of a baseline"),
            (OUT_OF_RANGE, "No baseline in range"),
        )
        if groups[kind]
    ]
    return f"On {utitle}: " + (" ".join(parts) or "no method point to judge.")


def _verdict_blocks(rows: list[dict], pkey: str, title: str) -> list[tuple]:
    """Per privacy measure: each method against each baseline curve on the primary utility, and the summary."""
    ukey, utitle, _ = FRONTIER_UTILITY[0]
    names = [n for n, pts in baseline_curves(rows) if sum(pkey in r and ukey in r for r in pts) > 0]
    blocks: list[tuple] = [("h", f"{title}: which methods are dominated")]
    if not names:
        return blocks + [("p", "No baseline curve has points on this measure: nothing to judge the methods against.")]
    head = ["point", "seeds", title, utitle] + [f"vs {n}" for n in names]
    head += ["verdict", "verdict on Rouge-L / cosine", "on the front of"]
    blocks += [("table", head, _verdict_rows(rows, pkey, names)), ("p", _verdict_summary(rows, pkey))]
    single = [r["label"] for r, _ in frontier_verdicts(rows, pkey, ukey, FRONTIER_UTILITY[0][2]) if len(r["seeds"]) < 2]
    if single:
        blocks.append(("p", ONE_SEED_NOTE.format(points=", ".join(single))))
    return blocks


ONE_SEED_NOTE = (
    "Single runs (one seed) among the judged points: {points}. Their spread is borrowed, pooled from the trained "
    "points with several seeds (with none, there is no noise allowance at all), so a verdict on them that rests on "
    "a small difference may reverse with more seeds: read it as a first reading."
)


FRONTIER_NOTE = (
    "Privacy, lower is more private on every measure: membership inference AUC of the reference-calibrated loss "
    "(0.5 = chance; the attack's direction is fixed, so an AUC below 0.5 is chance within its interval, not more "
    "privacy), the mean exposure of the planted canaries in bits, and the extraction attack's Rouge-L above "
    "the bare backbone's on the same targets (the audit's, paired per example, when the experiment was audited; "
    "else the run's last attack minus its floor). Utility on the test set: loss on the reference answers (lower is "
    "better; the primary utility), Rouge-L and MiniLM cosine of the answers (higher is better). Mean ± standard "
    "deviation over seeds. Baselines are curves: FedIT turned down (the server applies η of the averaged update), "
    "FedIT with fewer local steps, and DP-SGD (fedit-dp) at each target ε, each through its points in the order of "
    "its knob; the first two end in FedIT itself and in the bare backbone (η 0, no step). A method is dominated when "
    "a point of a curve, one of its runs or a point on the line between two adjacent runs, is at least as good on "
    "both axes and better on one (on the means); it ties within noise when the spreads (mean ± one standard "
    "deviation; a one-seed point gets the pooled seed-to-seed deviation of the points with several seeds) overlap "
    "on both axes; it dominates when the curve reaches its privacy and it has more utility there (or it is more "
    "private than the curve's most private point with at least its utility); otherwise no baseline is in range. "
    "'On the front of': no other point has that privacy measure as low and that utility as good."
)


CURVE_COLORS = ("#555555", "#8c564b", "#d62728")


def _draw_curves(ax, rows: list[dict], pkey: str, ukey: str, legend: dict) -> None:
    """The baseline curves: lines through their points in the order of the knob, each point named by its knob."""
    for (name, pts), color in zip(baseline_curves(rows), CURVE_COLORS):
        pts = [r for r in pts if pkey in r and ukey in r]
        if not pts:
            continue
        (line,) = ax.plot([r[pkey] for r in pts], [r[ukey] for r in pts], "-", marker="s", ms=4, lw=1.2, color=color)
        legend[name] = line
        for r in pts:
            ax.annotate(
                _curve_label(r), (r[pkey], r[ukey]), fontsize=6, color=color, xytext=(3, 3), textcoords="offset points"
            )


def _draw_points(ax, rows: list[dict], pkey: str, ukey: str, legend: dict, colors) -> None:
    """The methods (and the bare backbone) as points with error bars of one standard deviation over seeds."""
    marks = {"shared": "o", "private": "^", "bare": "*"}
    for i, r in enumerate(r for r in rows if not _knob_name(r["setting"])):
        if pkey in r and ukey in r:
            legend[r["label"]] = ax.errorbar(
                r[pkey],
                r[ukey],
                xerr=r.get(pkey + "_std", 0.0),
                yerr=r.get(ukey + "_std", 0.0),
                fmt=marks.get(r["model"], "s"),
                color=colors(i % colors.N),
                markersize=11 if r["model"] == "bare" else 6,
                capsize=3,
            )


def _plot_frontier(rows: list[dict], path: Path) -> bool:
    """One panel per privacy measure: the primary utility (held-out loss, axis inverted so up is better) against
    it; baselines as curves, methods as points with error bars."""
    plt = _pyplot()
    if plt is None:
        return False
    ukey, utitle, higher = FRONTIER_UTILITY[0]
    measures = [m for m in PRIVACY if sum(m[0] in r and ukey in r for r in rows) >= 2]
    if not measures:
        return False
    fig, axes = plt.subplots(1, len(measures), figsize=(5.0 * len(measures) + 2.8, 4.4), squeeze=False)
    n = sum(1 for r in rows if not _knob_name(r["setting"]))
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20")
    legend: dict = {}
    for ax, (pkey, title, xlabel) in zip(axes[0], measures):
        _draw_curves(ax, rows, pkey, ukey, legend)
        _draw_points(ax, rows, pkey, ukey, legend, colors)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(utitle + ("" if higher else " (axis inverted: lower is better)"))
        if not higher:
            ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 2.8 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _ratio(x: float, y: float, fmt: str) -> str:
    return format(x / y, fmt) if y else "-"


def _relative_blocks(rows: list[dict]) -> list[tuple]:
    """Each point against FedIT's shared model (means over seeds), in the terms issue 16 sets its goals in: the
    share of the backbone -> FedIT gap in reference loss closed, utility as a share of FedIT's, and extraction above
    the backbone as a multiple of FedIT's. Empty without both a FedIT shared point and the bare backbone's."""
    fedit = next((r for r in rows if (r["algorithm"], r["setting"], r["model"]) == ("fedit", "", "shared")), None)
    bare = next((r for r in rows if r["algorithm"] == "backbone"), None)
    if fedit is None or bare is None or "extraction_excess" not in fedit:
        return []
    table = []
    for r in rows:
        gap = bare.get("reference_loss", math.nan) - fedit.get("reference_loss", math.nan)
        closed = bare.get("reference_loss", math.nan) - r.get("reference_loss", math.nan)
        cells = [_ratio(closed, gap, ".0%") if math.isfinite(closed) and math.isfinite(gap) else "-"]
        for key in ("rouge_l", "cosine"):
            cells.append(_ratio(r[key], fedit[key], ".1%") if key in r and key in fedit else "-")
        excess = _ratio(r["extraction_excess"], fedit["extraction_excess"], ".2f") if "extraction_excess" in r else "-"
        table.append([r["label"], excess] + cells)
    head = ["point", "extraction above the backbone ÷ FedIT's", "loss gap closed (backbone → FedIT)"]
    return [
        ("h", "Against FedIT"),
        ("table", head + ["Rouge-L ÷ FedIT's", "cosine ÷ FedIT's"], table),
        ("p", "Against FedIT's shared model, from the means above (a ratio is '-' where FedIT's value is 0)."),
    ]


def frontier_section(records: list[dict], out: Path) -> Section | None:
    """The frontier: every point's privacy and utility, the privacy details, per privacy measure which methods are
    dominated and by what, the comparison with FedIT and the plot; from any results whose rows measured privacy
    (two points or more); ``None`` otherwise."""
    rows = frontier_rows(records)
    if len(rows) < 2:
        return None
    sec = Section("Privacy-utility frontier")
    sec.blocks += [_points_table(rows), ("p", FRONTIER_NOTE)]
    sec.blocks += _detail_blocks(rows)
    for pkey, title, _ in PRIVACY:
        if any(pkey in r for r in rows):
            sec.blocks += _verdict_blocks(rows, pkey, title)
    sec.blocks += _relative_blocks(rows)
    if _plot_frontier(rows, out / "frontier.png"):
        sec.blocks.append(("img", "frontier.png", "privacy-utility frontier"))
        sec.plots["privacy-utility frontier"] = "frontier.png"
    return sec


# ---------------------------------------------------------------------------------------------------------------
# Multiple-choice benchmark accuracies (fedpit evaluate|compare|sweep --benchmarks), per benchmark.


def _is_benchmark_results(data) -> bool:
    return isinstance(data, dict) and "benchmarks" in data and "models" in data and "records" not in data


def _read_json_file(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise DataError(path, f"cannot read file ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not valid JSON ({e})") from None


def _beside(path: str | Path) -> Path:
    """Where compare/sweep --benchmarks save the accuracies of the experiment at ``path`` (folder or results.json)."""
    p = Path(path)
    return (p if p.is_dir() else p.parent) / "benchmarks" / "results.json"


def find_benchmark_results(path: str | Path) -> tuple[Path, bool]:
    """(the benchmark results.json for ``path``, whether it is ``path`` itself): a results.json written by
    ``fedpit evaluate --benchmarks`` (or its folder), or an experiment whose ``benchmarks/results.json`` was written
    by ``compare``/``sweep --benchmarks``."""
    p = Path(path)
    own = p / "results.json" if p.is_dir() else p
    if own.is_file() and _is_benchmark_results(_read_json_file(own)):
        return own, True
    if _beside(p).is_file():
        return _beside(p), False
    raise DataError(
        p,
        "no benchmark results here (expected a results.json from fedpit evaluate --benchmarks, or an experiment "
        "folder with benchmarks/results.json from fedpit compare/sweep --benchmarks)",
    )


def _check_number(path: Path, value, where: str, key: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise DataError(path, f"expected a number in [{low:g}, {high:g}], got {value!r}", record=where, field=key)


def _check_benchmarks(path: Path, data: dict) -> None:
    """The fields a benchmark table is made from: per benchmark n, chance and majority; per model, acc and n."""
    if not isinstance(data.get("benchmarks"), dict) or not data["benchmarks"]:
        raise DataError(path, "expected an object of benchmarks", field="benchmarks")
    if not isinstance(data.get("models"), dict):
        raise DataError(path, "expected an object of models", field="models")
    for name, b in data["benchmarks"].items():
        where = f"benchmark {name}"
        if not isinstance(b, dict):
            raise DataError(path, "expected an object", record=where)
        _check_number(path, b.get("n"), where, "n", 1, math.inf)
        for key in ("chance", "majority"):
            _check_number(path, b.get(key), where, key, 0, 1)
    for label, m in data["models"].items():
        scores = m.get("scores") if isinstance(m, dict) else None
        if not isinstance(scores, dict):
            raise DataError(path, "expected an object with 'scores'", record=f"model {label}")
        for name, sc in scores.items():
            where = f"model {label}, {name}"
            if not isinstance(sc, dict):
                raise DataError(path, "expected an object", record=where)
            _check_number(path, sc.get("acc"), where, "acc", 0, 1)
            _check_number(path, sc.get("n"), where, "n", 1, math.inf)


def load_benchmark_results(path: str | Path, wanted: str = "all") -> tuple[Path, bool, dict]:
    """Find, read and check benchmark results; keep the benchmarks in ``wanted`` ("all", or a list like
    "pubmedqa,medqa"). Returns (file, whether it is ``path`` itself, results)."""
    from .mcq.data import parse_benchmarks

    file, own = find_benchmark_results(path)
    data = _read_json_file(file)
    if not isinstance(data, dict):
        raise DataError(file, f"expected a JSON object, got {type(data).__name__}")
    _check_benchmarks(file, data)
    if wanted != "all":
        names = parse_benchmarks(wanted)
        missing = [n for n in names if n not in data["benchmarks"]]
        if missing:
            saved = ", ".join(data["benchmarks"])
            raise DataError(file, f"{', '.join(missing)} not evaluated here (saved: {saved})", field="benchmarks")
        data = dict(data, benchmarks={n: data["benchmarks"][n] for n in names})
    return file, own, data


def noise_points(n: int) -> float:
    """Accuracy points below which a difference is noise at n items: the half-width of a 95% interval at 50%
    accuracy, the widest (4.4 points at n = 500, 9.8 at n = 100)."""
    from .mcq import Z95

    return 100 * Z95 * math.sqrt(0.25 / n)


def _model_row(label: str, m: dict, sc: dict) -> list[str]:
    from .mcq import ci95

    lo, hi = ci95(sc["acc"], sc["n"])
    k = len(m.get("adapters") or [None])
    if label == "backbone":
        label = "backbone (untuned)"
    elif k > 1:
        each = sc.get("per_adapter_acc") or []
        label += f" (mean of {k} adapters" + (f": {' / '.join(f'{100 * a:.1f}' for a in each)}" if each else "") + ")"
    norm = sc.get("acc_norm")
    norm_s = f"{100 * norm:.1f}" if isinstance(norm, (int, float)) else "-"
    return [label, f"{100 * sc['acc']:.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]", norm_s, str(sc["n"])]


def benchmark_section(bench: dict) -> Section:
    """Per benchmark: chance, majority class, the untuned backbone and every tuned model, accuracy % with its 95%
    interval; the protocol, the n and the smallest difference that is not noise at that n."""
    sec = Section("Multiple-choice benchmarks")
    first = f" First {bench['limit']} items of each set only." if bench.get("limit") else ""
    sec.blocks.append(("p", f"Protocol: {bench.get('label') or bench.get('protocol', '?')}.{first}"))
    if bench.get("model"):
        sec.blocks[-1] = ("p", sec.blocks[-1][1] + f" Backbone: {bench['model']} ({bench.get('dtype', '?')}).")
    for name, b in bench["benchmarks"].items():
        n = int(b["n"])
        sec.blocks.append(("h", f"{name} (n = {n})"))
        rows = [
            ["chance", f"{100 * b['chance']:.1f}", "-", "-", str(n)],
            [f"majority class ({b.get('majority_class', '?')})", f"{100 * b['majority']:.1f}", "-", "-", str(n)],
        ]
        rows += [_model_row(label, m, m["scores"][name]) for label, m in bench["models"].items() if name in m["scores"]]
        sec.blocks.append(("table", ["model", "accuracy %", "95% CI (Wilson)", "acc_norm %", "n"], rows))
        sec.blocks.append(
            (
                "p",
                (f"{b['note']}. " if b.get("note") else "")
                + f"With n = {n}, a difference below {noise_points(n):.1f} points is noise (the half-width of a 95% "
                "interval at 50% accuracy).",
            )
        )
    sec.blocks.append(
        (
            "p",
            "CareQA, the FlowerTune medical leaderboard's fourth set, is not available here, so the leaderboard's "
            "4-set mean cannot be computed.",
        )
    )
    return sec
