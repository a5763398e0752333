"""Self-generation end to end at the journal's volume: candidates written per minute, old path vs new, same run.

``self_generate`` (every filter and retry) asks for 32 candidates from one demo client with the packaged SmolLM2 in
its default dtype, greedy, the default settings otherwise. The variants add one speedup at a time:

  old            batch 8, HF's stop-string criterion rebuilt on every call, HF's default cache and attention
  +stop cached   the stop criterion built once per tokenizer
  +batch 32      all of the client's prompts decoded in one wave (batch >= candidates)
  +fast decode   a static KV cache and the one-query decode attention (``fedpit.generate.fast_decoding``)

The old paths are this folder's own copy (``old_paths.py``); the library ships only the new ones. (A fifth variant,
several Phase A tasks per call, was dropped with ``selfgen.tasks_per_call``: SmolLM2-135M does not continue the task
list, so it never paid.)

Candidates are examples that passed every filter. Each variant's output is then measured (MiniLM on-task and answer
relevance, diversity, closeness to private text; outside the timed part) so a faster path that writes worse data shows.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/selfgen_throughput.py [--candidates 32]
        [--template model|alpaca|chat|auto] [--only 0,3] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--template", default="model", help="selfgen.template for every variant")
    ap.add_argument("--client", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated variant numbers to run (default: all)")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args()

    import torch
    from old_paths import old_paths
    from transformers import StopStringCriteria

    from fedpit import generate as gen
    from fedpit.backbone import quiet_libraries
    from fedpit.config import Config
    from fedpit.runner import make_engine, prepare
    from fedpit.selfgen import SelfGenReport, assess_and_select, self_generate

    quiet_libraries()
    cfg = Config()
    prep = prepare(cfg)
    local = prep.client_examples(args.client)
    engine = make_engine(cfg)
    model, tok = engine.model, engine.tokenizer
    base = dataclasses.replace(cfg.selfgen, num_instructions=args.candidates, template=args.template, measure=False)
    wide = max(32, args.candidates)
    variants = [  # (name, selfgen settings, stop criterion cached, fast decoding)
        ("old", dict(batch_size=8), False, False),
        ("+stop cached", dict(batch_size=8), True, False),
        (f"+batch {wide}", dict(batch_size=wide), True, False),
        ("+fast decode", dict(batch_size=wide), True, True),
    ]
    if args.only:
        keep = {int(x) for x in args.only.split(",")}
        variants = [v for i, v in enumerate(variants) if i in keep]

    t = time.perf_counter()
    for _ in range(3):
        StopStringCriteria(tok, ["\n"])
    build_s = (time.perf_counter() - t) / 3
    gen.generate(model, tok, ["Hello"], max_new_tokens=4)  # warm-up
    print(
        f"{cfg.model.name} ({engine.backbone.dtype}), {torch.get_num_threads()} threads, client {args.client} "
        f"({len(local)} local examples), {args.candidates} candidates wanted, template {args.template}"
    )
    print(f"HF StopStringCriteria build: {build_s:.3f} s per call")
    print(
        f"{'variant':>16} {'seconds':>8} {'cands':>6} {'per min':>8} {'vs old':>7} {'instr gen':>9} {'resp gen':>8} "
        f"{'on-task':>7} {'ans rel':>7} {'distinct':>8} {'self-RL':>7} {'RL priv':>7} {'words':>5}"
    )
    results = []
    for name, over, cache, fast in variants:
        s = dataclasses.replace(base, **over)
        gen._stop_cache.clear()
        with old_paths(fast_decode=fast, cache_stop=cache):
            t, c = time.perf_counter(), time.process_time()
            cands, rep = self_generate(model, tok, local, s, seed=args.seed, template=cfg.model.template)
            dt, cpu = time.perf_counter() - t, time.process_time() - c
        q = SelfGenReport()
        assess_and_select(cands, local, dataclasses.replace(s, measure=True), q)
        per_min = 60 * len(cands) / dt
        row = {
            "variant": name,
            "settings": {**over, "stop_cached": cache, "fast_decode": fast},
            "seconds": round(dt, 2),
            "cpu_seconds": round(cpu, 2),
            "candidates": len(cands),
            "per_minute": round(per_min, 2),
            "generated_instructions": rep.generated_instructions,
            "generated_responses": rep.generated_responses,
            "dropped": {k: v for k, v in rep.dropped.items() if v},
            "quality": q.quality,
            "examples": [{"instruction": e.instruction, "output": e.output} for e in cands[:5]],
        }
        results.append(row)
        ratio = per_min / results[0]["per_minute"] if results[0]["per_minute"] else float("nan")
        qq = q.quality

        def f(k, qq=qq):
            v = qq.get(k)
            return "-" if v is None else f"{v:.2f}"

        print(
            f"{name:>16} {dt:8.1f} {len(cands):6d} {per_min:8.1f} {ratio:6.2f}x {rep.generated_instructions:9d} "
            f"{rep.generated_responses:8d} {f('on_task'):>7} {f('answer_relevance'):>7} {f('distinct'):>8} "
            f"{f('self_rouge_l'):>7} {f('private_rouge_l'):>7} {qq.get('response_words') or 0:5.0f}  cpu {cpu:.0f} s",
            flush=True,
        )
    if len(results) > 1:
        print(
            f"new path / old path: {results[-1]['per_minute'] / max(1e-9, results[0]['per_minute']):.2f}x "
            f"candidates per minute (target 5x)"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "model": cfg.model.name,
                    "dtype": str(engine.backbone.dtype),
                    "threads": torch.get_num_threads(),
                    "client": args.client,
                    "local_examples": len(local),
                    "candidates_wanted": args.candidates,
                    "template": args.template,
                    "stop_criterion_build_s": round(build_s, 4),
                    "variants": results,
                    "ratio_new_vs_old": (results[-1]["per_minute"] / results[0]["per_minute"])
                    if len(results) > 1 and results[0]["per_minute"]
                    else None,
                },
                fh,
                indent=1,
                ensure_ascii=False,
            )


if __name__ == "__main__":
    main()
