"""Self-generation speed: fedpit's generator against plain HF ``generate`` at batch 1, and llama.cpp single-stream.

All sides decode the same prompts: the self-generation prompts of one demo client (Phase A: "Task 1..8" instruction
prompts; Phase B: one worked example plus a new instruction), greedy, repetition penalty 1.2, the default token caps
and stop strings. fedpit and HF run the packaged SmolLM2 in the default dtype (bf16 on this CPU) with the round-1
global LoRA adapter attached; llama.cpp (only when the `llamacpp` extra is installed) runs the same model's Q4_1 GGUF
without an adapter, n_threads = 2 (its repeat penalty looks back 64 tokens, HF's over the whole sequence).

Useful tokens are counted the same way for every side: the returned text (cut at EOS or a stop string) re-tokenized.
Also printed: how many outputs equal HF batch 1's (batched bf16 decoding may differ in rare near-ties), and a full
``self_generate`` call (filters and retries included) at the default batch versus batch 1, as kept examples per minute.

    .venv/bin/python benchmarks/generation.py [--prompts 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16, help="prompts per phase")
    ap.add_argument("--skip-selfgen", action="store_true", help="skip the end-to-end self_generate comparison")
    ap.add_argument("--dump", default=None, help="write every side's outputs to this JSON file")
    args = ap.parse_args()

    import numpy as np
    import torch

    from fedpit.backbone import packaged_gguf, quiet_libraries
    from fedpit.config import Config
    from fedpit.federation import make_engine, prepare
    from fedpit.generate import generate
    from fedpit.selfgen import instruction_prompt, response_prompt, self_generate

    quiet_libraries()
    cfg = Config()
    prep = prepare(cfg)
    local = prep.client_examples(0)
    engine = make_engine(cfg)
    model, tok = engine.model, engine.tokenizer
    s = cfg.selfgen
    other = prep.client_examples(1)  # instructions the local demonstrations do not contain
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
                    other[j].instruction,
                    template=cfg.model.template,
                    tokenizer=tok,
                )
                for j in rng.choice(len(other), args.prompts, replace=False)
            ],
            s.max_response_tokens,
            ["###"],
        ),
    }

    def ntok(texts):
        return sum(len(tok(t, add_special_tokens=False).input_ids) for t in texts)

    def hf_batch1(prompts, cap, stop):
        out = []
        for p in prompts:
            enc = tok(p, return_tensors="pt").to(engine.device)
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
            text = tok.decode(g[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for st in stop:
                text = text.split(st)[0]
            out.append(text.strip())
        return out

    def ours(prompts, cap, stop, merge=True):
        return generate(
            model,
            tok,
            prompts,
            max_new_tokens=cap,
            batch_size=s.batch_size,
            do_sample=False,
            repetition_penalty=s.repetition_penalty,
            stop_strings=stop,
            merge_lora=merge,
        )

    sides = {
        "HF generate, batch 1": hf_batch1,
        f"fedpit generate, batch {s.batch_size}": ours,
        "  same, LoRA not merged": lambda p, c, st: ours(p, c, st, merge=False),
    }
    llama = None
    try:
        from llama_cpp import Llama

        llama = Llama(model_path=str(packaged_gguf()), n_threads=torch.get_num_threads(), n_ctx=2048, verbose=False)

        def llama_cpp(prompts, cap, stop):
            return [
                llama.create_completion(
                    p, max_tokens=cap, temperature=0.0, repeat_penalty=s.repetition_penalty, stop=stop
                )["choices"][0]["text"].strip()
                for p in prompts
            ]

        sides["llama.cpp Q4_1, single stream"] = llama_cpp
    except ImportError:
        print("(llama-cpp-python not installed: pip install 'fedpit[llamacpp]' adds the llama.cpp column)")

    generate(model, tok, ["Hello"], max_new_tokens=4)  # warm-up
    print(
        f"{cfg.model.name} ({engine.backbone.dtype}), {torch.get_num_threads()} threads, "
        f"{args.prompts} prompts per phase"
    )
    print(f"{'side':>32} {'phase':>13} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'vs HF b1':>9} {'same as HF b1':>14}")
    totals: dict[str, list[float]] = {}
    dump: dict[str, dict[str, list[str]]] = {}
    for phase, (prompts, cap, stop) in phases.items():
        ref = None
        for name, fn in sides.items():
            t = time.perf_counter()
            texts = fn(prompts, cap, stop)
            dt = time.perf_counter() - t
            dump.setdefault(phase, {"prompts": prompts})[name] = texts
            n = ntok(texts)
            ref = ref or (texts, n / dt)
            same = sum(a == b for a, b in zip(texts, ref[0]))
            tt = totals.setdefault(name, [0.0, 0])
            tt[0] += dt
            tt[1] += n
            print(
                f"{name:>32} {phase:>13} {dt:8.1f} {n:7d} {n / dt:7.1f} {n / dt / ref[1]:8.2f}x {same:>7}/{len(texts)}",
                flush=True,
            )
    base = totals["HF generate, batch 1"]
    for name, (dt, n) in totals.items():
        print(f"{name:>32} {'both':>13} {dt:8.1f} {n:7d} {n / dt:7.1f} {n / dt / (base[1] / base[0]):8.2f}x")

    if args.dump:
        import json

        with open(args.dump, "w", encoding="utf-8") as f:
            json.dump(dump, f, indent=1, ensure_ascii=False)
    if not args.skip_selfgen:
        print(f"\nself_generate end to end (filters, retries), client 0, {s.num_instructions} wanted, same seed:")
        for bs in (s.batch_size, 1):
            t = time.perf_counter()
            kept, rep = self_generate(
                model, tok, local, dataclasses.replace(s, batch_size=bs), seed=1, template=cfg.model.template
            )
            dt = time.perf_counter() - t
            print(
                f"  batch {bs}: {len(kept)} kept ({rep.generated_instructions} instructions, "
                f"{rep.generated_responses} responses generated) in {dt:.1f} s = {60 * len(kept) / dt:.1f} per minute"
            )


if __name__ == "__main__":
    main()
