"""A Flower deployment round against an in-process round, measured in the same benchmark run.

Runs ``fedpit run`` (in-process) and ``fedpit flower local`` (a SuperLink and one SuperNode per client on 127.0.0.1,
TLS and node keys; each site a long-lived executor with ``--threads`` torch threads) on the same config, then reads
both run folders: seconds per round (``metrics.jsonl`` round rows: train, aggregate, held-out evaluation), the whole
command's wall time, and each deployment message's timing (``timing`` in the client rows). Prints

    deployment/in-process round ratio: R
    time to first step: S s

``time to first step`` is the largest, over the training messages a site received with its backbone already
loaded (every message after the site's first of the run), of the time from the message in the ClientApp's hands
(Flower started a ``flwr-clientapp`` for it and gave it the message) to the start of its first training step; the
figure counting Flower's hand-over too (from the moment the ``flwr-clientapp`` process started) is printed beside
it. ``--process-per-message`` measures bare SuperNodes instead (the work in each message's own ``flwr-clientapp``
process: imports and a backbone load every time).

    nice -n 5 .venv/bin/python benchmarks/flower_deploy.py [--rounds 3] [--threads 1] [--set key=value ...]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t


def _round_seconds(rows: list[dict]) -> list[float]:
    return [r["seconds"] for r in rows if r["kind"] == "round" and r["round"] > 0]


def _heldout(rows: list[dict]) -> list[float | None]:
    """The held-out loss after each round (round rows, from round 1)."""
    return [r.get("test_loss") for r in rows if r["kind"] == "round" and r["round"] > 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--algorithm", default="fedit")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per site in the deployment")
    ap.add_argument(
        "--omp-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS for both commands (in-process run, server, sites; 0: unset). On a machine busy with "
        "other work, 2 OpenMP threads on 2 cores wait for each other at every barrier: 1 keeps both sides sane",
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--process-per-message", action="store_true", help="Flower's default path, for comparison")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("--workdir", help="where the run folders go (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="fedpit-flower-bench-")).absolute()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.omp_threads:
        env["OMP_NUM_THREADS"] = str(args.omp_threads)
    common = [f"algorithm={args.algorithm}", f"federation.rounds={args.rounds}", f"output_dir={work / 'runs'}"]
    sets = [x for s in [*common, *args.overrides] for x in ("--set", s)]
    fedpit = [sys.executable, "-m", "fedpit"]
    out: dict = {
        "rounds": args.rounds,
        "algorithm": args.algorithm,
        "threads_per_site": args.threads,
        "omp_threads": args.omp_threads or None,
        "overrides": args.overrides,
        "load_average_at_start": os.getloadavg()[0],
    }

    if not args.skip_in_process:
        wall = _timed([*fedpit, "run", "--quiet", *sets, "--set", "run_name=inproc"], env)
        inproc = _rows(work / "runs" / "inproc")
        out["in_process"] = {"wall_s": round(wall, 1), "round_s": _round_seconds(inproc), "heldout": _heldout(inproc)}
        print(f"in-process: {wall:.1f} s, rounds {out['in_process']['round_s']} s", flush=True)

    deploy = [*fedpit, "flower", "local", *sets, "--set", "run_name=deployed", "--workdir", str(work / "flower")]
    deploy += ["--threads", str(args.threads)] + (["--process-per-message"] if args.process_per_message else [])
    wall = _timed(deploy, env)
    rows = _rows(work / "runs" / "deployed")
    timing = [r.get("timing", {}) | {"round": r["round"], "client": r["client"]} for r in rows if r["kind"] == "client"]
    # from the message in the ClientApp's hands (input-s after its process started; older runs: handover-s)
    warm = [round(t["first-step-s"] - t.get("input-s", t["handover-s"]), 3) for t in timing if t.get("warm")]
    with_download = [t["first-step-s"] for t in timing if t.get("warm")]
    out["deployment"] = {
        "wall_s": round(wall, 1),
        "round_s": _round_seconds(rows),
        "heldout": _heldout(rows),
        "messages": timing,
        "process_per_message": args.process_per_message,
    }
    print(f"deployment: {wall:.1f} s, rounds {out['deployment']['round_s']} s", flush=True)
    for t in timing:
        print(
            f"  round {t['round']} client {t['client']}: first step {t.get('first-step-s')} s (warm {t.get('warm')}), "
            f"generate {t.get('generate-s')} s, train {t.get('train-s')} s, upload {t.get('upload-s')} s, "
            f"delivery {t.get('delivery-s')} s, handover {t.get('handover-s')} s"
        )
    if warm:
        out["time_to_first_step_s"] = max(warm)
        out["time_to_first_step_median_s"] = statistics.median(warm)
        out["time_to_first_step_with_download_s"] = max(with_download)
        print(f"time to first step: {max(warm):.2f} s (median {statistics.median(warm):.2f} s, {len(warm)} messages)")
        print(f"  counting Flower's hand-over (process start, task input, FAB) too: {max(with_download):.2f} s")
    else:
        print("time to first step: n/a (no message found its backbone loaded)")
    if "in_process" in out:
        ratio = statistics.mean(out["deployment"]["round_s"]) / statistics.mean(out["in_process"]["round_s"])
        out["round_ratio"] = round(ratio, 3)
        out["wall_ratio"] = round(out["deployment"]["wall_s"] / out["in_process"]["wall_s"], 3)
        print(f"deployment/in-process round ratio: {ratio:.2f} (whole command: {out['wall_ratio']:.2f})")
        out["heldout_equal"] = out["deployment"]["heldout"] == out["in_process"]["heldout"]
        print(
            f"held-out loss per round: in-process {out['in_process']['heldout']}, deployment "
            f"{out['deployment']['heldout']} ({'equal' if out['heldout_equal'] else 'DIFFERENT'})"
        )
    out["load_average_at_end"] = os.getloadavg()[0]
    print(f"load average (1 min) at start {out['load_average_at_start']:.1f}, at end {out['load_average_at_end']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
