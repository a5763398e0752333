"""The privacy-utility frontier's results file, from an experiment's ``results.json``: each point (method, setting,
model) with its three privacy measures and its utility, and each method's verdict against each baseline curve per
privacy measure, as ``fedpit frontier``'s report computes them (:func:`fedpit.report.frontier_rows` and
:func:`fedpit.report.frontier_verdicts`; nothing is recomputed here).

    .venv/bin/python benchmarks/frontier_results.py experiments/frontier-audit/results.json \
        [--command "the commands that made it"] [--note TEXT ...]

It rewrites ``benchmarks/results/frontier.json``, which docs/results.md and docs/privacy.md quote.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import write_result  # noqa: E402

from fedpit.dominance import overall  # noqa: E402
from fedpit.report import FRONTIER_UTILITY, PRIVACY, baseline_curves, frontier_rows, frontier_verdicts  # noqa: E402

SHORT_MEASURE = {"mia_ref_auc": "mia", "canary_exposure_mean": "exposure", "extraction_excess": "extraction"}
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="an experiment's results.json (fedpit frontier --audit)")
    ap.add_argument("--command", default="", help="the commands that made the experiment")
    ap.add_argument("--note", action="append", default=[], help="a note kept in the results file (repeatable)")
    ap.add_argument("--out-dir", type=Path, help="where frontier.json goes (default: benchmarks/results)")
    args = ap.parse_args(argv)
    records = json.loads(args.results.read_text(encoding="utf-8"))["records"]
    rows = frontier_rows(records)
    tables = {"points": points_table(rows)}
    values = {}
    for pkey, title, _ in PRIVACY:
        table, verdicts = verdict_table(rows, pkey)
        table["caption"] = f"On {title} against the held-out loss: each method against each baseline curve."
        tables[f"verdicts_{SHORT_MEASURE[pkey]}"] = table
        for label, v in verdicts.items():
            values[f"{SHORT_MEASURE[pkey]}_{slug(label)}"] = {"value": v, "format": "{}"}
    seeds = sorted({s for r in rows for s in r["seeds"]})
    values["status"] = {"value": f"measured over seed(s) {','.join(map(str, seeds))}", "format": "{}"}
    values["runs"] = {"value": len({(r["run_dir"]) for r in records if "run_dir" in r}), "format": "{}"}
    write_result(
        "frontier",
        title="The privacy-utility frontier: every method against FedIT turned down and DP-SGD, each run audited",
        tables=tables,
        values=values,
        notes=[*args.note, f"source: {args.results} (fedpit frontier's results.json)"],
        command=args.command or None,
        out_dir=args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
