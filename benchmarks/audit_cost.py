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
    a = json.loads((run_dir / "audit.json").read_text())
    row = {"case": case, "seed": seed, "run_s": round(run_s), "audit_s": round(audit_s)}
    row |= {"run_cpu_s": round(run_cpu), "audit_cpu_s": round(audit_cpu), "ratio": round(audit_cpu / run_cpu, 2)}
    for model in ("shared", "backbone"):
        for score in ("loss", "ref"):
            r = a["mia"].get(model, {}).get(score)
            if r:
                row[f"{model}_{score}_auc"] = {"mean": r["auc"], "lo": r["auc_ci"][0], "hi": r["auc_ci"][1]}
        c = a["canaries"].get(model)
        if c and c["k"]:
            row[f"{model}_exposure"] = {"mean": c["exposure_mean"], "max": c["exposure_max"]}
        ex = a["extraction"].get(model, {})
        if "excess_rouge_l" in ex:
            row[f"{model}_excess"] = {"mean": ex["excess_rouge_l"], "lo": ex["excess_ci"][0], "hi": ex["excess_ci"][1]}
    row["leaks"] = len(a["leaks"])
    print(json.dumps(row), flush=True)
    return row


AUC = "{mean:.3f} [{lo:.3f}, {hi:.3f}]"
COLUMNS = [
    {"key": "case", "header": "case"},
    {"key": "seed", "header": "seed"},
    {"key": "run_s", "header": "run", "format": "duration"},
    {"key": "audit_s", "header": "audit", "format": "duration"},
    {"key": "run_cpu_s", "header": "run, CPU", "format": "duration"},
    {"key": "audit_cpu_s", "header": "audit, CPU", "format": "duration"},
    {"key": "ratio", "header": "audit / run (CPU)", "format": "{:.2f}"},
    {"key": "shared_loss_auc", "header": "shared MIA AUC (loss)", "format": AUC},
    {"key": "shared_ref_auc", "header": "shared MIA AUC (ref)", "format": AUC},
    {"key": "backbone_loss_auc", "header": "backbone MIA AUC (loss)", "format": AUC},
    {"key": "shared_exposure", "header": "shared exposure, bits", "format": "{mean:.1f} (max {max:.1f})"},
    {"key": "backbone_exposure", "header": "backbone exposure, bits", "format": "{mean:.1f} (max {max:.1f})"},
    {"key": "shared_excess", "header": "shared extraction excess", "format": AUC},
]


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
    cmd = "fedpit audit RUN_DIR after fedpit run [--set algorithm=fedit --set privacy.holdout=0.5 ...]"
    notes = []
    if args.append and RESULT.exists():
        old = json.loads(RESULT.read_text())
        mine = {(r["case"], r["seed"]) for r in rows}
        rows = [r for r in old["tables"]["main"]["rows"] if (r["case"], r["seed"]) not in mine] + rows
        notes = [*old.get("notes", []), f"rows of {sorted(mine)} from: {command_line()} ({date.today()})"]
    write_result(
        "privacy_audit",
        notes=notes,
        title="The privacy audit: its cost beside the run, and FedIT's shared model against the bare backbone",
        tables={
            "main": {"columns": [c for c in COLUMNS if any(c["key"] in r for r in rows)], "rows": rows, "command": cmd}
        },
        values={f"{r['case']}_ratio": {"value": r["ratio"], "format": "{:.2f}"} for r in rows if r.get("ratio")},
    )


if __name__ == "__main__":
    main()
