"""Held-out loss of each client's personalized model after every round, for finished runs side by side.

A run records the personalized models' held-out loss only at the end (``personal_test_loss`` in summary.json); the
clients' private state of every round stays in the run folder (``clients/client_K/state.round_NNN.safetensors``), so
this script scores it after the fact, the way the run scores the final one (:func:`fedpit.federation.personal_loss`:
backbone + private, or backbone + shared + private for ``fedpit.personal = "stacked"``), on the run's own held-out
set. The shared model's held-out loss per round (metrics.jsonl) is printed beside it.

    PYTHONPATH=src python benchmarks/personal_per_round.py RUN_DIR [RUN_DIR ...] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def per_round(run_dir: Path) -> dict:
    from fedpit.config import load_config
    from fedpit.federation import encoded_test, make_engine, personal_loss, personal_states, prepare
    from fedpit.rundir import RunDir

    cfg = load_config(run_dir / "config.toml")
    rd = RunDir(run_dir)
    engine = make_engine(cfg)
    test_enc = encoded_test(cfg, engine, prepare(cfg))
    rounds = {m["round"]: m.get("test_loss") for m in rd.read_metrics() if m.get("kind") == "round"}
    personal = {}
    for r in range(1, min(cfg.federation.rounds, rd.progress()["completed_rounds"]) + 1):  # committed rounds only
        states = personal_states(rd, cfg.partition.num_clients, r)
        personal[r] = {k: personal_loss(engine, s, test_enc) for k, s in states.items()}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return {
        "run_dir": str(run_dir),
        "algorithm": cfg.algorithm,
        "personal": cfg.fedpit.personal,
        "seed": cfg.seed,
        "n_test": len(test_enc),
        "shared_test_loss": [rounds.get(r) for r in range(cfg.federation.rounds + 1)],
        "personal_test_loss": {r: [v[k] for k in sorted(v)] for r, v in personal.items()},
        "personal_mean": {r: sum(v.values()) / len(v) for r, v in personal.items() if v},
        "summary_personal_test_loss": summary.get("personal_test_loss"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()
    from fedpit.backbone import quiet_libraries

    quiet_libraries()
    results = [per_round(run) for run in args.runs]
    for res in results:
        head = f"{res['algorithm']}, personal={res['personal']}, seed {res['seed']}, {res['n_test']} test items"
        print(f"{res['run_dir']} ({head})")
        print(f"  shared model, rounds 0..R: {' '.join(f'{x:.3f}' for x in res['shared_test_loss'] if x is not None)}")
        for r, losses in res["personal_test_loss"].items():
            mean = res["personal_mean"].get(r)
            print(f"  round {r}: personalized mean {mean:.3f}  per client {' '.join(f'{x:.3f}' for x in losses)}")
        if res["summary_personal_test_loss"]:
            final = " ".join(f"{x:.3f}" for x in res["summary_personal_test_loss"])
            print(f"  summary.json personal_test_loss: {final}")
    if len(results) > 1:
        last = max(results[0]["personal_mean"])
        row = "  ".join(f"{r['personal']}: {r['personal_mean'][last]:.3f}" for r in results)
        print(f"final round {last}, personalized mean held-out loss: {row}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
