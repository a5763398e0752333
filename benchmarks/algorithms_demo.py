"""Every algorithm on the default demo (3 clients, Dirichlet alpha 1.0, SmolLM2-135M), one after another.

Prints, per method: wall time, peak RSS of its own child process, the shared adapter's held-out loss before and after
training, and the mean held-out loss of the clients' private adapters where the method keeps them.

    .venv/bin/python benchmarks/algorithms_demo.py [--algorithms fedpit,fedit,...] [--out DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from fedpit.algorithms import load_all

    ap.add_argument("--algorithms", default=",".join(load_all()))
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="fedpit-algos-"))
    fedpit = Path(sys.executable).with_name("fedpit")
    print(f"{'algorithm':>13} {'wall':>8} {'peak RSS':>9} {'shared held-out loss':>22} {'private (mean)':>15}")
    for name in args.algorithms.split(","):
        cmd = [
            "/usr/bin/time",
            "-f",
            "%M",
            str(fedpit),
            "run",
            "--quiet",
            "--set",
            f"algorithm={name}",
            "--set",
            f"output_dir={out}",
            "--set",
            f"run_name={name}",
        ]
        for o in args.overrides:
            cmd += ["--set", o]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(f"{name:>13} FAILED ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        rss_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
        s = json.loads((out / name / "summary.json").read_text())
        tl = s["test_loss_per_round"]
        pers = s.get("personal_test_loss") or []
        pm = f"{sum(pers) / len(pers):.3f}" if pers else "-"
        shared = f"{tl[0]:.3f} -> {tl[-1]:.3f}" if s["shares_global_adapter"] else "(not shared)"
        print(f"{name:>13} {wall / 60:6.2f} m {rss_mb / 1024:7.2f} GiB {shared:>22} {pm:>15}", flush=True)
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
