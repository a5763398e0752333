"""What the privacy audit costs beside the run it audits, and whether it tells a trained model from the backbone.

Two cases, each a ``fedpit run`` then ``fedpit audit`` of its folder, both timed as processes on the same machine:

* ``default``: ``fedpit run`` with no settings (FedPIT on the demo); its audit measures extraction only;
* ``separation``: FedIT with the audit's documented setting (half of the demo held out as membership non-members,
  6 canaries x 4 copies): the instrument check, FedIT's shared model against the bare backbone.

Writes ``benchmarks/results/privacy_audit.json`` (one row per case and seed: run and audit wall time, their ratio,
the shared model's and the backbone's MIA AUC with its interval, canary exposure, extraction excess). The audit
starts with no cached backbone results, as a first audit does; the ratio is of CPU time (user + system), which
stays fair when something else shares the machine::

    .venv/bin/python benchmarks/audit_cost.py --cases separation default --seeds 1
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from results import RESULTS_DIR, command_line, write_result

RESULT = RESULTS_DIR / "privacy_audit.json"

FEDPIT = str(Path(sys.executable).with_name("fedpit"))
CASES = {
    "default": [],
    "separation": [
        "algorithm=fedit",
        "privacy.holdout=0.5",
        "privacy.canaries=6",
        "privacy.canary_repeats=4",
    ],
    "fedpit-channels": [  # FedPIT v1 under the same audit: does private text reach the shared model?
        "algorithm=fedpit",
        "privacy.holdout=0.5",
        "privacy.canaries=6",
        "privacy.canary_repeats=4",
    ],
}


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, the process and its children) of one command: the CPU time is
    the fair figure when something else shares the machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_audit_cache() -> None:
    """Remove the audit's cached backbone results, so each audit pays for them as a first audit does."""
    from fedpit.backbone import cache_root

    for f in (cache_root(None) / "audit").glob("backbone-*.json"):
        f.unlink()


def one(case: str, seed: int, root: Path) -> dict:
    sets = [*CASES[case], f"seed={seed}", f"output_dir={root}", f"run_name={case}-s{seed}"]
    run_s, run_cpu = timed([FEDPIT, "run", "--quiet", *(x for s in sets for x in ("--set", s))])
    run_dir = root / f"{case}-s{seed}"
    cold_audit_cache()
    audit_s, audit_cpu = timed([FEDPIT, "audit", str(run_dir)])
    row = readings(json.loads((run_dir / "audit.json").read_text()), case, seed)
    row |= {"run_s": round(run_s), "audit_s": round(audit_s), "run_cpu_s": round(run_cpu)}
    row |= {"audit_cpu_s": round(audit_cpu), "wall_ratio": round(audit_s / run_s, 2)}
    row["cpu_ratio"] = round(audit_cpu / run_cpu, 2)
    print(json.dumps(row), flush=True)
    return row


def readings(a: dict, case: str, seed: int) -> dict:
    """One row of an ``audit.json``: the shared model's and the backbone's MIA AUCs (with intervals and the TPR at
    10% FPR), canary exposure and extraction excess."""
    row = {"case": case, "seed": seed}
    for model in ("shared", "backbone"):
        for score in ("loss", "ref", "zlib"):
            r = a["mia"].get(model, {}).get(score)
            if r:
                row[f"{model}_{score}_auc"] = {"mean": r["auc"], "lo": r["auc_ci"][0], "hi": r["auc_ci"][1]}
                row[f"{model}_{score}_tpr10"] = r["tpr_at_10pct_fpr"]
        c = a["canaries"].get(model)
        if c and c["k"]:
            row[f"{model}_exposure"] = {"mean": c["exposure_mean"], "max": c["exposure_max"]}
        ex = a["extraction"].get(model, {})
        if "excess_rouge_l" in ex:
            row[f"{model}_excess"] = {"mean": ex["excess_rouge_l"], "lo": ex["excess_ci"][0], "hi": ex["excess_ci"][1]}
    row["leaks"] = len(a["leaks"])
    phases = a.get("phase_seconds", {})
    for phase in ("mia", "canaries", "extraction"):
        spent = [v[phase] for v in phases.values() if isinstance(v, dict) and phase in v]
        if spent:
            row[f"{phase}_s"] = round(sum(spent) + (phases.get("backbone_losses", 0) if phase == "mia" else 0))
    return row


AUC = "{mean:.3f} [{lo:.3f}, {hi:.3f}]"
EXPOSURE = "{mean:.2f} (max {max:.2f})"
COLUMNS = [
    {"key": "case", "header": "case"},
    {"key": "seed", "header": "seed"},
    {"key": "shared_loss_auc", "header": "shared model: MIA AUC, loss", "format": AUC},
    {"key": "shared_ref_auc", "header": "shared model: MIA AUC, reference-calibrated", "format": AUC},
    {"key": "shared_zlib_auc", "header": "shared model: MIA AUC, zlib", "format": AUC},
    {"key": "backbone_loss_auc", "header": "backbone: MIA AUC, loss", "format": AUC},
    {"key": "shared_exposure", "header": "shared model: canary exposure, bits", "format": EXPOSURE},
    {"key": "backbone_exposure", "header": "backbone: canary exposure, bits", "format": EXPOSURE},
    {"key": "shared_excess", "header": "shared model: extraction excess Rouge-L", "format": AUC},
]
COST = [
    {"key": "case", "header": "case"},
    {"key": "run_s", "header": "run (wall)", "format": "duration"},
    {"key": "audit_s", "header": "audit (wall)", "format": "duration"},
    {"key": "run_cpu_s", "header": "run (CPU)", "format": "duration"},
    {"key": "audit_cpu_s", "header": "audit (CPU)", "format": "duration"},
    {"key": "wall_ratio", "header": "audit / run (wall)", "format": "{:.2f}"},
    {"key": "cpu_ratio", "header": "audit / run (CPU)", "format": "{:.2f}"},
    {"key": "mia_s", "header": "of which MIA losses", "format": "duration"},
    {"key": "canaries_s", "header": "canary tries", "format": "duration"},
    {"key": "extraction_s", "header": "extraction attacks", "format": "duration"},
]
CASE_NOTES = {
    "separation": "separation: FedIT at the defaults (3 clients, 3 rounds, 5 local steps) on the demo with "
    "privacy.holdout=0.5 (80 members, 80 non-members) and 6 canaries x 4 copies of 4 digits (13.3 bits).",
    "fedpit-channels": "fedpit-channels: FedPIT v1 at the defaults under the same audit setting.",
    "default": "default: `fedpit run` with no settings; its audit measures extraction only.",
}


def write(rows: list[dict], notes: list[str], append: bool, command: str | None = None) -> None:
    """``results/privacy_audit.json``: the readings (``main``), the costs (``cost``) and the figures the docs quote
    (from the first ``separation`` row)."""
    if append and RESULT.exists():
        old = json.loads(RESULT.read_text())
        mine = {(r["case"], r["seed"]) for r in rows}
        rows = [r for r in old["tables"]["main"]["rows"] if (r["case"], r["seed"]) not in mine] + rows
        notes = [*old.get("notes", []), *notes]
    used = lambda cols: [c for c in cols if c["key"] in ("case", "seed") or any(c["key"] in r for r in rows)]  # noqa: E731
    sep = next((r for r in rows if r["case"] == "separation"), None)
    values = {}
    if sep is not None:
        fig = lambda v, f: {"value": v, "format": f}  # noqa: E731
        values = {
            "shared_ref_auc": fig(sep["shared_ref_auc"]["mean"], "{:.2f}"),
            "shared_ref_auc_lo": fig(sep["shared_ref_auc"]["lo"], "{:.2f}"),
            "shared_ref_auc_hi": fig(sep["shared_ref_auc"]["hi"], "{:.2f}"),
            "shared_ref_tpr10": fig(sep["shared_ref_tpr10"], "{:.0%}"),
            "backbone_loss_auc": fig(sep["backbone_loss_auc"]["mean"], "{:.2f}"),
            "shared_exposure_max": fig(sep["shared_exposure"]["max"], "{:.1f}"),
            "backbone_exposure_mean": fig(sep["backbone_exposure"]["mean"], "{:.1f}"),
            "wall_ratio": fig(sep["wall_ratio"], "{:.1f}x"),
        }
    default = next((r for r in rows if r["case"] == "default"), None)
    if default is not None:
        values["default_ratio"] = {"value": default["wall_ratio"], "format": "{:.2f}x"}
    write_result(
        "privacy_audit",
        title="The privacy audit: trained shared models against the bare backbone, and what the audit costs",
        command=command,
        notes=notes,
        tables={
            "main": {"columns": used(COLUMNS), "rows": rows, "caption": "One audit per row; 95% bootstrap intervals."},
            "cost": {"columns": used(COST), "rows": rows, "caption": "The run and its audit (see the notes on load)."},
        },
        values=values,
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["separation", "default"])
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[1])
    ap.add_argument("--keep", metavar="DIR", help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--append", action="store_true", help="keep the rows of other cases and seeds already in the file")
    args = ap.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fedpit-audit-cost-"))
    rows = [one(case, seed, root) for case in args.cases for seed in args.seeds]
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    notes = [CASE_NOTES[c] for c in args.cases] + [f"{date.today()}: {command_line()}"]
    write(rows, notes, args.append)


if __name__ == "__main__":
    main()
