"""The privacy-utility frontier's results file, from an experiment's ``results.json``: each point (method, setting,
model) with its three privacy measures and its utility, and each method's verdict against each baseline curve per
privacy measure, as ``fedpit frontier``'s report computes them (:func:`fedpit.report.frontier_rows` and
:func:`fedpit.report.frontier_verdicts`; nothing is recomputed here), and FedIT's audit seed by seed (does the
instrument tell its shared model from the bare backbone on every seed?).

    .venv/bin/python benchmarks/frontier_results.py experiments/frontier-audit/results.json \
        [--command "the commands that made it"] [--note TEXT ...] [--name frontier] [--title TEXT]

It rewrites ``benchmarks/results/NAME.json`` (``frontier.json``: the demo's frontier; ``frontier-medical.json``: the
same frontier on Medical Meadow), which docs/results.md and docs/privacy.md quote.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_cost import COLUMNS, readings  # noqa: E402
from results import write_result  # noqa: E402

from fedpit.dominance import overall  # noqa: E402
from fedpit.errors import FedpitError  # noqa: E402
from fedpit.report import (  # noqa: E402
    FRONTIER_UTILITY,
    PRIVACY,
    _point_label,
    baseline_curves,
    frontier_rows,
    frontier_verdicts,
    load_results,
)

SHORT_MEASURE = {"mia_ref_auc": "mia", "canary_exposure_mean": "exposure", "extraction_excess": "extraction"}
TIMES = [  # one process ran the runs and their audits one at a time, alone on the machine
    {"key": "wall_s", "header": "run (wall)", "format": "duration"},
    {"key": "audit_s", "header": "audit (wall)", "format": "duration"},
]
VALUE_PREFIX = {"mia_ref_auc": "auc", "canary_exposure_mean": "exposure", "extraction_excess": "excess"}
VALUE_PREFIX |= {"reference_loss": "loss", "cosine": "cosine"}
UTILITY = {"reference_loss": ("gap", "{:.3f}"), "cosine": ("gap_cosine", "{:.3f}")}  # key -> gap value prefix, format
TITLE = "The privacy-utility frontier: every method against FedIT turned down and DP-SGD, each run audited"
FORMATS = {"mia_ref_auc": "{:.3f}", "canary_exposure_mean": "{:.2f}", "extraction_excess": "{:.3f}"}


def _cell(row: dict, key: str, fmt: str):
    """A number, or mean ± sd when the point has several seeds (``None`` when it was not measured)."""
    if key not in row:
        return None
    if len(row["seeds"]) > 1:
        spec = fmt.replace("{:", "{mean:") + " ± " + fmt.replace("{:", "{std:")
        return {"mean": row[key], "std": row.get(key + "_std", 0.0), "format": spec}
    return {"value": row[key], "format": fmt.replace("{:", "{value:")}


def slug(label: str) -> str:
    """A point's label as a results key: 'fedpit-mix β=0.6 shared' -> 'fedpit_mix_beta_0_6_shared'."""
    text = label.replace("β", "beta").replace("η", "eta").replace("ε", "eps")
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def points_table(rows: list[dict]) -> dict:
    cols = [{"key": "point", "header": "point"}, {"key": "seeds", "header": "seeds"}]
    cols += [{"key": k, "header": t} for k, t, _ in PRIVACY]
    cols += [{"key": k, "header": t} for k, t, _ in FRONTIER_UTILITY]
    cols += [{"key": "dp_epsilon", "header": "DP ε spent"}]
    out = []
    for r in rows:
        row = {"point": r["label"], "seeds": ",".join(map(str, r["seeds"]))}
        for k, _, _ in PRIVACY:
            row[k] = _cell(r, k, FORMATS[k])
        for k, _, _ in FRONTIER_UTILITY:
            row[k] = _cell(r, k, "{:.3f}")
        row["dp_epsilon"] = _cell(r, "dp_epsilon", "{:.1f}")
        out.append(row)
    caption = (
        "Each point's privacy (lower is more private: MIA AUC of the reference-calibrated loss, 0.5 = chance; mean "
        "canary exposure in bits; the audit's extraction Rouge-L above the bare backbone's on the same targets) and "
        "utility on the test set (held-out reference loss, lower is better; Rouge-L and MiniLM cosine of greedy "
        "answers, higher is better). Mean ± sd where a point has several seeds."
    )
    return {"columns": cols, "rows": out, "caption": caption}


def verdict_table(rows: list[dict], pkey: str) -> tuple[dict, dict]:
    """One row per method point: its verdict against each baseline curve and overall, on the held-out loss."""
    ukey, _, higher = FRONTIER_UTILITY[0]
    names = [n for n, pts in baseline_curves(rows) if any(pkey in r and ukey in r for r in pts)]
    cols = [{"key": "point", "header": "point"}, {"key": "seeds", "header": "seeds"}]
    cols += [{"key": n, "header": f"vs {n}"} for n in names] + [{"key": "overall", "header": "verdict"}]
    out, overall_by_point = [], {}
    for r, v in frontier_verdicts(rows, pkey, ukey, higher):
        row = {"point": r["label"], "seeds": ",".join(map(str, r["seeds"]))}
        for n in names:
            row[n] = v[n].text(n) if n in v else None
        row["overall"] = overall(list(v.values())) if v else None
        overall_by_point[r["label"]] = row["overall"]
        out.append(row)
    return {"columns": cols, "rows": out}, overall_by_point


def margins(rows: list[dict], pkey: str, ukey: str = "reference_loss") -> dict:
    """Per judged point and curve: how much utility the point has over the curve point it is read against (positive
    = the point is better), for the prose to quote: ``margin_*`` on the held-out loss, ``margin_cosine_*`` on the
    MiniLM cosine."""
    higher = next(h for k, _, h in FRONTIER_UTILITY if k == ukey)
    prefix = "margin" if ukey == "reference_loss" else f"margin_{ukey}"
    values = {}
    for r, v in frontier_verdicts(rows, pkey, ukey, higher):
        for name, verdict in v.items():
            if verdict.against is not None:
                gain = r[ukey] - verdict.against.y if higher else verdict.against.y - r[ukey]
                key = f"{prefix}_{SHORT_MEASURE[pkey]}_{slug(r['label'])}_vs_{slug(name)}"
                values[key] = {"value": gain, "format": "{:.3f}"}
    return values


def cosine_verdicts(rows: list[dict], pkey: str) -> dict:
    """Each method point's overall verdict on ``pkey`` against the MiniLM cosine (``verdict_cosine_*``): where the
    held-out loss barely moves (another test set's style), the cosine is the utility that ranks."""
    values = {}
    for r, v in frontier_verdicts(rows, pkey, "cosine", True):
        if v:  # judged against some curve
            key = f"verdict_cosine_{SHORT_MEASURE[pkey]}_{slug(r['label'])}"
            values[key] = {"value": overall(list(v.values())), "format": "{}"}
    return values


def fedit_by_seed(records: list[dict]) -> tuple[dict | None, dict]:
    """FedIT's audits seed by seed (its shared model against the bare backbone, each with its own interval): does
    the instrument separate? Read from each FedIT run's ``audit.json``."""
    fedit = [r for r in records if (r["algorithm"], r["setting"], r["model"]) == ("fedit", "", "shared")]
    by_seed = {r["seed"]: r for r in fedit if r.get("run_dir")}
    rows = []
    for seed, rec in sorted(by_seed.items()):
        f = Path(rec["run_dir"]) / "audit.json"
        if f.is_file():
            row = readings(json.loads(f.read_text(encoding="utf-8")), "fedit", seed)
            rows.append(row | {k: round(rec[k]) for k in ("wall_s", "audit_s") if rec.get(k) is not None})
    if not rows:
        return None, {}
    fig = lambda v, f: {"value": v, "format": f}  # noqa: E731
    ref = [r["shared_ref_auc"] for r in rows if "shared_ref_auc" in r]
    bb = [r["backbone_loss_auc"] for r in rows if "backbone_loss_auc" in r]
    exp = [r["shared_exposure"]["max"] for r in rows if "shared_exposure" in r]
    bexp = [r["backbone_exposure"]["mean"] for r in rows if "backbone_exposure" in r]
    values = {"fedit_seeds": fig(len(rows), "{}")}
    if ref:
        values |= {"fedit_ref_auc_min": fig(min(x["mean"] for x in ref), "{:.2f}")}
        values |= {"fedit_ref_auc_max": fig(max(x["mean"] for x in ref), "{:.2f}")}
        values |= {"fedit_ref_lo_min": fig(min(x["lo"] for x in ref), "{:.2f}")}
        values |= {"fedit_ref_excludes_chance": fig(sum(x["lo"] > 0.5 for x in ref), "{}")}
    if bb:
        values |= {"backbone_covers_chance": fig(sum(x["lo"] <= 0.5 <= x["hi"] for x in bb), "{}")}
    if exp:
        values |= {"fedit_exposure_max": fig(max(exp), "{:.1f}")}
    if bexp:
        values |= {"backbone_exposure_mean_max": fig(max(bexp), "{:.1f}")}
    cols = [c for c in COLUMNS if c["key"] != "case" and any(c["key"] in r for r in rows)]
    cols += [c for c in TIMES if any(c["key"] in r for r in rows)]
    caption = "FedIT's shared model and the bare backbone, one audit per seed; 95% bootstrap intervals."
    return {"columns": cols, "rows": rows, "caption": caption}, values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="an experiment's results.json (fedpit frontier --audit)")
    ap.add_argument("--command", default="", help="the commands that made the experiment")
    ap.add_argument("--note", action="append", default=[], help="a note kept in the results file (repeatable)")
    ap.add_argument("--out-dir", type=Path, help="where NAME.json goes (default: benchmarks/results)")
    ap.add_argument("--name", default="frontier", help="the results file's name, without .json (default: frontier)")
    ap.add_argument("--title", default=TITLE, help="its title")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[\w-]+", args.name):
        print(f"frontier_results.py: error: --name {args.name!r}: a plain file name without '.json'", file=sys.stderr)
        return 2
    try:  # a missing or malformed results file: one line naming it, exit 2, nothing written
        records = load_results(args.results)[1]["records"]
    except FedpitError as e:
        print(f"frontier_results.py: error: {e}", file=sys.stderr)
        return 2
    rows = frontier_rows(records)
    tables = {"points": points_table(rows)}
    values = {}
    for pkey, title, _ in PRIVACY:
        table, verdicts = verdict_table(rows, pkey)
        table["caption"] = f"On {title} against the held-out loss: each method against each baseline curve."
        tables[f"verdicts_{SHORT_MEASURE[pkey]}"] = table
        values |= margins(rows, pkey) | margins(rows, pkey, "cosine") | cosine_verdicts(rows, pkey)
        for label, v in verdicts.items():
            if v is None:
                continue  # judged against no curve (FedIT is the end of the curves it could be judged on)
            values[f"verdict_{SHORT_MEASURE[pkey]}_{slug(label)}"] = {"value": v, "format": "{}"}
    table, more = fedit_by_seed(records)
    if table is not None:
        tables["fedit_by_seed"] = table
        values |= more
    for r in rows:  # each point's figures, for the prose to quote (one place: this file)
        for key, fmt in (*FORMATS.items(), *((k, f) for k, (_, f) in UTILITY.items())):
            if key in r:
                values[f"{VALUE_PREFIX[key]}_{slug(r['label'])}"] = {"value": r[key], "format": fmt}
                if len(r["seeds"]) > 1:
                    values[f"{VALUE_PREFIX[key]}_sd_{slug(r['label'])}"] = {"value": r[key + "_std"], "format": fmt}
    for key, (prefix, _) in UTILITY.items():  # the share of the backbone -> FedIT gap each point closes
        ends = {r["label"]: r.get(key) for r in rows if r["label"] in ("bare backbone", "fedit shared")}
        if None in ends.values() or len(ends) != 2:
            continue
        span = ends["fedit shared"] - ends["bare backbone"]  # signed: the loss falls, the cosine rises
        for r in rows:
            if key in r and r["label"] not in ends and span != 0:
                gap = (r[key] - ends["bare backbone"]) / span
                values[f"{prefix}_{slug(r['label'])}"] = {"value": gap, "format": "{:.0%}"}
    for rec in records:  # each run's shared-model membership interval
        f = Path(rec.get("run_dir") or "/nonexistent") / "audit.json"
        if rec["model"] == "shared" and f.is_file():
            ci = json.loads(f.read_text(encoding="utf-8"))["mia"].get("shared", {}).get("ref", {}).get("auc_ci")
            label = slug(_point_label(rec["algorithm"], rec["setting"], "shared"))
            if ci:
                values[f"auc_ci_{label}_s{rec['seed']}"] = {"value": f"[{ci[0]:.3f}, {ci[1]:.3f}]", "format": "{}"}
    multi = [r["label"] for r in rows if len(r["seeds"]) > 1]
    seeds = sorted({s for r in rows for s in r["seeds"]})
    status = f"{', '.join(multi)} over seeds {','.join(map(str, seeds))}; every other point one run" if multi else ""
    values["status"] = {"value": status or "every point one run", "format": "{}"}
    values["runs"] = {"value": len({r["run_dir"] for r in records if r.get("run_dir")}), "format": "{}"}
    seconds = {r["run_dir"]: (r.get("wall_s") or 0) + (r.get("audit_s") or 0) for r in records if r.get("run_dir")}
    values["run_hours"] = {"value": sum(seconds.values()) / 3600, "format": "{:.1f}"}  # training and audit, each run
    write_result(
        args.name,
        title=args.title,
        tables=tables,
        values=values,
        notes=[*args.note, f"source: {args.results} (fedpit frontier's results.json)"],
        command=args.command or None,
        out_dir=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
