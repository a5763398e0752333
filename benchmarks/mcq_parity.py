"""`fedpit evaluate --benchmarks` against lm-evaluation-harness run directly, on the packaged SmolLM2 (or any model).

The lm-eval side uses lm-eval's own ``pubmedqa``, ``medqa_4options`` and ``medmcqa`` task YAMLs from the installed
package, with only the dataset pointed at the same converted local files fedpit reads; the fedpit side is
``fedpit.mcq.evaluate_models`` (reusing its cache when the same settings ran before, e.g. through the CLI). Printed
side by side: acc and acc_norm of both, and the largest per-item log-likelihood difference. Exit code 1 on any
accuracy mismatch.

    .venv/bin/python benchmarks/mcq_parity.py [--limit 100] [--adapter PATH] [--dtype auto] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
OWN = {"pubmedqa": "pubmedqa/pubmedqa.yaml", "medqa": "medqa/medqa.yaml", "medmcqa": "medmcqa/medmcqa.yaml"}


def lm_eval_direct(
    model_path: str, adapter: str | None, dtype: str, data_files: dict, limit: int | None, batch_size: int
) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = {}
    for name, f in data_files.items():
        cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / OWN[name])
        cfg.update(
            dataset_path="json",
            dataset_name=None,
            training_split=None,
            validation_split=None,
            test_split="test",
            dataset_kwargs={"data_files": {"test": str(f)}},
        )
        tasks[cfg["task"]] = (name, cfg)
    args = {"pretrained": model_path, "dtype": dtype} | ({"peft": adapter} if adapter else {})
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        tasks=[c for _, c in tasks.values()],
        task_manager=TaskManager(include_defaults=False),
        batch_size=batch_size,
        device="cpu",
        limit=limit,
        log_samples=True,
    )
    return {
        name: {
            "acc": out["results"][t]["acc,none"],
            "acc_norm": out["results"][t].get("acc_norm,none"),
            "lls": [[float(r[0]) for r in s["filtered_resps"]] for s in out["samples"][t]],
        }
        for t, (name, _) in tasks.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmarks", default="pubmedqa,medqa,medmcqa")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapter")
    ap.add_argument("--limit", type=int, default=0, help="first N items of each set (0 = all)")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--benchmark-data")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()

    from fedpit.backbone import quiet_libraries, resolve_model_path
    from fedpit.mcq import dtype_name, evaluate_models
    from fedpit.mcq.data import parse_benchmarks, prepare

    quiet_libraries()
    names = parse_benchmarks(args.benchmarks)
    files = {n: prepare(n, args.benchmark_data)[0] for n in names}
    model_path = resolve_model_path(args.model)
    adapters = [("adapter", args.adapter)] if args.adapter else []
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="fedpit-mcq-parity-"))
    t0 = time.perf_counter()
    ours = evaluate_models(
        names,
        adapters,
        model=args.model,
        data_dir=args.benchmark_data,
        limit=args.limit or None,
        dtype=args.dtype,
        batch_size=args.batch_size,
        out=out,
        progress=True,
    )
    t_ours = time.perf_counter() - t0
    label = "adapter" if args.adapter else "backbone"
    t0 = time.perf_counter()
    theirs = lm_eval_direct(
        model_path, args.adapter, dtype_name(args.dtype), files, args.limit or None, args.batch_size
    )
    t_theirs = time.perf_counter() - t0
    rows, ok = [], True
    for n in names:
        o = ours["models"][label]["scores"][n]
        lls = [
            json.loads(x)["loglikelihoods"] for x in (out / "samples" / label / f"{n}.jsonl").read_text().splitlines()
        ]
        diff = max((abs(a - b) for x, y in zip(lls, theirs[n]["lls"]) for a, b in zip(x, y)), default=None)
        same = o["acc"] == theirs[n]["acc"] and (
            theirs[n]["acc_norm"] is None  # lm-eval's pubmedqa: acc only
            or o.get("acc_norm") == theirs[n]["acc_norm"]
        )
        ok &= same
        rows.append(
            {
                "benchmark": n,
                "n": o["n"],
                "fedpit_acc": o["acc"],
                "lm_eval_acc": theirs[n]["acc"],
                "fedpit_acc_norm": o.get("acc_norm"),
                "lm_eval_acc_norm": theirs[n]["acc_norm"],
                "max_abs_loglik_diff": diff,
                "identical": same,
            }
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "model": model_path,
                    "adapter": args.adapter,
                    "limit": args.limit,
                    "dtype": dtype_name(args.dtype),
                    "rows": rows,
                    "fedpit_s": t_ours,
                    "lm_eval_s": t_theirs,
                },
                indent=2,
            )
        )
    print(
        f"{'benchmark':10} {'n':>5} {'fedpit acc':>11} {'lm-eval acc':>12} {'fedpit norm':>12} {'lm-eval norm':>13} "
        f"{'max |dLL|':>10}"
    )
    for r in rows:
        d = "n/a" if r["max_abs_loglik_diff"] is None else f"{r['max_abs_loglik_diff']:.2e}"
        norm = "-" if r["lm_eval_acc_norm"] is None else f"{r['lm_eval_acc_norm']:.4f}"
        print(
            f"{r['benchmark']:10} {r['n']:>5} {r['fedpit_acc']:>11.4f} {r['lm_eval_acc']:>12.4f} "
            f"{r['fedpit_acc_norm']:>12.4f} {norm:>13} {d:>10}"
        )
    print(
        f"fedpit {t_ours:.0f} s (about 0 when cached), lm-eval direct {t_theirs:.0f} s; "
        + ("identical accuracies" if ok else "MISMATCH")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
