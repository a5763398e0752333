"""Local-training throughput of the fedpit engine on the default config (SmolLM2-135M, LoRA q,k,v,o r16).

Prints tokens per second of real (non-padding) tokens, peak RSS and model FLOP utilization (4 x parameters FLOPs per
real token against the bf16 matrix-multiply peak measured at the start of the run), for the default dtype and for fp32
side by side in one run (this machine is shared and noisy: compare ratios, not absolute figures across runs).

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--batch-size 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(dtype: str, steps: int, batch_size: int, examples) -> dict:
    import torch

    from fedpit.backbone import load_backbone
    from fedpit.config import Config
    from fedpit.engine import Engine

    cfg = Config()
    bb = load_backbone(cfg.model.name, dtype=dtype)
    eng = Engine(bb, cfg.lora, max_seq_len=cfg.model.max_seq_len, seed=0)
    eng.train(examples[:batch_size], lr=cfg.train.lr, steps=1, batch_size=batch_size, seed=0)  # warm-up
    st = eng.train(examples, lr=cfg.train.lr, steps=steps, batch_size=batch_size, seed=0)
    out = {
        "dtype": str(bb.dtype).replace("torch.", ""),
        "steps": st.steps,
        "tokens": st.tokens,
        "seconds": st.seconds,
        "tok_per_s": st.tokens / st.seconds,
        "s_per_step": st.seconds / st.steps,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for n, p in eng.model.named_parameters() if "lora_" not in n),
    }
    del eng, bb
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtypes", default="auto,fp32")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()

    import torch
    from machine import lora_train_flops_per_token, machine_peaks

    from fedpit.backbone import quiet_libraries
    from fedpit.data import load_demo

    quiet_libraries()

    examples = load_demo("train")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{args.steps} steps of batch {args.batch_size} on the demo data, LoRA r16 q,k,v,o"
    )
    _, peak = machine_peaks(torch)
    print(f"bf16 matmul peak measured here: {peak / 1e9:.0f} GFLOP/s at {torch.get_num_threads()} threads")
    results = []
    for dt in args.dtypes.split(","):
        t0 = time.perf_counter()
        r = measure(dt, args.steps, args.batch_size, examples)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        r.update(
            peak_rss_so_far_mb=round(rss),
            mfu_vs_bf16_peak=r["tok_per_s"] * lora_train_flops_per_token(r["params"]) / peak,
        )
        results.append(r)
        print(
            f"{dt:>5} -> {r['dtype']:>8}: {r['tok_per_s']:7.1f} real tokens/s, {r['s_per_step']:.2f} s/step, "
            f"{r['tokens']} tokens, threads {r['threads']}, MFU {r['mfu_vs_bf16_peak']:.1%} of the bf16 peak, "
            f"peak RSS so far {rss:.0f} MB ({time.perf_counter() - t0:.0f} s incl. load)"
        )
    if len(results) == 2:
        a, b = results
        print(f"ratio {a['dtype']}/{b['dtype']}: {a['tok_per_s'] / b['tok_per_s']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {"bf16_gflops": round(peak / 1e9, 1), "flops_per_token": "4 x parameters", "runs": results},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
