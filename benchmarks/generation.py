"""Self-generation decoding: fedpit's generator against plain HF ``generate`` at the same batch size and prompts,
and against this CPU's roofline, measured in one run.

Every side decodes the same prompts: the self-generation prompts of one demo client (Phase A: "Task 1..8"
instruction prompts; Phase B: a worked example plus a new instruction), greedy, repetition penalty 1.2, the default
token caps and stop strings, the packaged SmolLM2 in the default dtype (bf16 on this CPU) with a LoRA adapter
attached (B != 0). Per batch size:

  HF generate          plain ``model.generate`` on the peft model, HF's defaults (KV cache grown by
                       concatenation, SDPA every step, LoRA unmerged), the same left-padded batches
  fedpit, old path     ``fedpit.generate.generate`` inside ``old_paths(fast_decode=False)`` (``old_paths.py``:
                       LoRA folded in, stop criterion built once, HF's default cache and attention)
  fedpit               ``fedpit.generate.generate`` as shipped (also a static KV cache and the one-query
                       decode attention)

Useful tokens are counted the same way for every side: the returned text (cut at EOS or a stop string)
re-tokenized. Also printed: how many outputs equal HF's (bf16 results depend on the kernels, so greedy decoding can
part at near-ties), decode steps (the longest output of each batch), and the roofline: this run measures the CPU's
read bandwidth (sum of a 1 GiB tensor) and bf16 matrix-multiply peak (2048^3), and prints per batch size the
step-time floor max(weight bytes / bandwidth, 2 * parameters * batch / peak) and the fraction of it reached (the
floor ignores the KV cache, so it flatters nobody).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/generation.py [--batch-sizes 8,32] [--prompts 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="8,32")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per phase (a multiple of each batch size)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()

    import numpy as np
    import torch
    from old_paths import old_paths

    from fedpit import generate as gen
    from fedpit.backbone import quiet_libraries
    from fedpit.config import Config
    from fedpit.data import load_demo
    from fedpit.federation import make_engine, prepare
    from fedpit.selfgen import instruction_prompt, response_prompt

    quiet_libraries()
    cfg = Config()
    prep = prepare(cfg)
    local, other = prep.client_examples(0), prep.client_examples(1)
    engine = make_engine(cfg)
    engine.load_adapter(engine.initial_adapter)
    engine.train(load_demo("train")[:8], lr=1e-3, steps=1, batch_size=4, seed=0)  # a real (B != 0) adapter
    model, tok, s = engine.model, engine.tokenizer, cfg.selfgen
    rng = np.random.default_rng(0)
    k = min(s.demos, len(local))
    phases = {
        "instructions": (
            [
                instruction_prompt([local[i].instruction for i in rng.choice(len(local), k, replace=False)])
                for _ in range(args.prompts)
            ],
            s.max_instruction_tokens,
            ["\n"],
        ),
        "responses": (
            [
                response_prompt(
                    [local[int(rng.integers(len(local)))]],
                    other[j % len(other)].instruction,
                    template=cfg.model.template,
                    tokenizer=tok,
                )
                for j in rng.permutation(max(args.prompts, len(other)))[: args.prompts]
            ],
            s.max_response_tokens,
            ["###"],
        ),
    }

    steps = [0]
    inner = model.generate

    def counting_generate(**kw):  # decode steps of every batch: the longest output
        g = inner(**kw)
        steps[0] += g.shape[1] - kw["input_ids"].shape[1]
        return g

    model.generate = counting_generate

    def hf_generate(prompts, cap, stop, bs):
        out = [""] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # the same batches as fedpit's
        tok.padding_side = "left"
        for i in range(0, len(prompts), bs):
            idx = order[i : i + bs]
            enc = tok([prompts[j] for j in idx], return_tensors="pt", padding=True)
            with torch.no_grad():
                g = model.generate(
                    **enc,
                    max_new_tokens=cap,
                    do_sample=False,
                    repetition_penalty=s.repetition_penalty,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    stop_strings=stop,
                    tokenizer=tok,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            for j, row in zip(idx, g[:, enc["input_ids"].shape[1] :]):
                out[j] = tok.decode(row, skip_special_tokens=True).split(stop[0])[0].strip()
        return out

    def fedpit(fast):
        def run(prompts, cap, stop, bs):
            with old_paths(fast_decode=fast):
                return gen.generate(
                    model,
                    tok,
                    prompts,
                    max_new_tokens=cap,
                    batch_size=bs,
                    repetition_penalty=s.repetition_penalty,
                    stop_strings=stop,
                )

        return run

    sides = {"HF generate": hf_generate, "fedpit, old path": fedpit(False), "fedpit": fedpit(True)}
    gen.generate(model, tok, ["Hello", "Hi there"], max_new_tokens=4)  # warm-up, both paths
    hf_generate(["Hello"], 4, ["\n"], 1)
    from machine import machine_peaks

    bw, peak = machine_peaks(torch)
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" not in n)
    threads = torch.get_num_threads()
    print(f"{cfg.model.name} ({engine.backbone.dtype}), {threads} threads, {args.prompts} prompts per phase")
    print(
        f"measured: read bandwidth {bw / 1e9:.1f} GB/s, bf16 matmul {peak / 1e9:.0f} GFLOP/s; "
        f"weights {weight_bytes / 1e6:.0f} MB, {params / 1e6:.0f}M parameters"
    )
    results = {
        "model": cfg.model.name,
        "threads": threads,
        "bandwidth_gbs": bw / 1e9,
        "bf16_gflops": peak / 1e9,
        "weight_mb": weight_bytes / 1e6,
        "rows": [],
    }
    head = (
        f"{'batch':>5} {'side':>17} {'phase':>13} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'vs HF':>6} "
        f"{'same as HF':>10} {'ms/step':>8} {'floor ms':>8} {'roofline':>8}"
    )
    print(head)
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        floor_ms = 1e3 * max(weight_bytes / bw, 2 * params * bs / peak)
        totals: dict[str, list[float]] = {}
        for phase, (prompts, cap, stop) in phases.items():
            ref = None
            for name, fn in sides.items():
                steps[0] = 0
                t = time.perf_counter()
                texts = fn(prompts, cap, stop, bs)
                dt = time.perf_counter() - t
                n = sum(len(tok(x, add_special_tokens=False).input_ids) for x in texts)
                ref = ref or (texts, n / dt)
                same = sum(a == b for a, b in zip(texts, ref[0]))
                tt = totals.setdefault(name, [0.0, 0])
                tt[0], tt[1] = tt[0] + dt, tt[1] + n
                row = dict(
                    batch=bs,
                    side=name,
                    phase=phase,
                    seconds=dt,
                    tokens=n,
                    tok_s=n / dt,
                    vs_hf=n / dt / ref[1],
                    same_as_hf=same,
                    n=len(texts),
                )
                ms = 1e3 * dt / steps[0]  # prefill included: a step's share of the whole call
                row.update(steps=steps[0], ms_per_step=ms, floor_ms=floor_ms, roofline=floor_ms / ms)
                print(
                    f"{bs:5d} {name:>17} {phase:>13} {dt:8.1f} {n:7d} {n / dt:7.1f} {row['vs_hf']:5.2f}x "
                    f"{same:>5}/{len(texts):<4} {ms:8.1f} {floor_ms:8.1f} {floor_ms / ms:7.1%}",
                    flush=True,
                )
                results["rows"].append(row)
        hf = totals["HF generate"]
        for name, (dt, n) in totals.items():
            ratio = n / dt / (hf[1] / hf[0])
            results["rows"].append(
                dict(batch=bs, side=name, phase="both", seconds=dt, tokens=n, tok_s=n / dt, vs_hf=ratio)
            )
            print(f"{bs:5d} {name:>17} {'both':>13} {dt:8.1f} {n:7d} {n / dt:7.1f} {ratio:5.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
