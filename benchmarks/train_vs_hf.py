"""Local LoRA training: the fedpit engine against HF ``Trainer`` + peft (the FlowerTune / OpenFedLLM recipe).

Both sides get the same backbone (the packaged SmolLM2-135M, default dtype), the same LoRA (the default config's
q,k,v,o r16), the same tokenized demo examples (prompt masked, response + EOS as labels, max_seq_len from the config),
the same batch size, optimizer (AdamW, constant lr, grad-norm clip 1.0) and number of optimizer steps. HF runs twice:
with Trainer's defaults (random batches, padding to the longest) and with ``group_by_length=True``.

Each variant runs in its own child process (so peak RSS is its own), after one warm-up step, and the variants
alternate over ``--repeats`` rounds (this machine is shared and noisy; the medians and their ratios are what to read).
Printed: real (non-padding) tokens per second, seconds per step, padding share, peak RSS, the ratio to fedpit, and
model FLOP utilization (MFU: 4 x parameters FLOPs per real token, against this CPU's bf16 matrix-multiply peak measured
by the parent process at the children's thread count, before the variants run).

    .venv/bin/python benchmarks/train_vs_hf.py [--steps 8] [--batch-size 4] [--repeats 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VARIANTS = ("fedpit", "hf-trainer", "hf-trainer-grouped")


def _setup(batch_size: int, steps: int):
    from fedpit.backbone import load_backbone, quiet_libraries
    from fedpit.config import Config
    from fedpit.data import load_demo

    quiet_libraries()
    cfg = Config()
    n = batch_size * (steps + 1)
    pool = load_demo("train")
    examples = [pool[i % len(pool)] for i in range(n)]
    bb = load_backbone(cfg.model.name, dtype=cfg.model.dtype)
    return cfg, bb, examples


def run_fedpit(batch_size: int, steps: int) -> dict:
    from fedpit.engine import Engine

    cfg, bb, examples = _setup(batch_size, steps)
    eng = Engine(
        bb,
        cfg.lora,
        template=cfg.model.template,
        max_seq_len=cfg.model.max_seq_len,
        seed=0,
    )
    enc = eng.encode(examples)
    eng.train(examples[:batch_size], lr=cfg.train.lr, steps=1, batch_size=batch_size, seed=0)  # warm-up
    st = eng.train(examples, lr=cfg.train.lr, steps=steps, batch_size=batch_size, seed=0)
    padded = _padded_tokens_fedpit(enc, batch_size, steps)
    return {"tokens": st.tokens, "seconds": st.seconds, "steps": st.steps, "padded_tokens": padded}


def _padded_tokens_fedpit(enc, batch_size: int, steps: int) -> int:
    """Tokens the engine's batches occupy including padding (the same batch order its train() drew with seed 0)."""
    import numpy as np

    from fedpit.engine import make_batches

    lengths = [len(e.input_ids) for e in enc]
    rng = np.random.default_rng(0)
    batches: list[list[int]] = []
    while len(batches) < steps:
        batches += make_batches(lengths, batch_size, rng)
    return sum(max(lengths[i] for i in b) * len(b) for b in batches[:steps])


def run_hf(batch_size: int, steps: int, grouped: bool) -> dict:
    import tempfile

    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from fedpit.prompts import encode_example

    cfg, bb, examples = _setup(batch_size, steps)
    lo = cfg.lora
    tok = bb.tokenizer
    enc = [
        e
        for e in (
            encode_example(tok, ex, template=cfg.model.template, max_len=cfg.model.max_seq_len) for ex in examples
        )
        if e is not None
    ]
    ds = Dataset.from_list(
        [
            {"input_ids": list(e.input_ids), "labels": list(e.labels), "attention_mask": [1] * len(e.input_ids)}
            for e in enc
        ]
    )
    model = get_peft_model(
        bb.model,
        LoraConfig(
            r=lo.r,
            lora_alpha=lo.alpha,
            lora_dropout=lo.dropout,
            target_modules=list(lo.target_modules),
            task_type="CAUSAL_LM",
        ),
    )
    base_collate = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    counts = {"real": 0, "padded": 0}

    def collate(features):
        batch = base_collate(features)
        counts["real"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["attention_mask"].numel()
        return batch

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            self.seconds = time.perf_counter() - self.t0

    def trainer(max_steps: int, clock: Clock, out: str) -> Trainer:
        args = TrainingArguments(
            output_dir=out,
            max_steps=max_steps,
            per_device_train_batch_size=batch_size,
            learning_rate=cfg.train.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            optim="adamw_torch",
            weight_decay=0.0,
            max_grad_norm=1.0,
            train_sampling_strategy="group_by_length" if grouped else "random",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
            remove_unused_columns=False,
        )
        return Trainer(model=model, args=args, train_dataset=ds, data_collator=collate, callbacks=[clock])

    with tempfile.TemporaryDirectory() as out:
        trainer(1, Clock(), out).train()  # warm-up
        counts.update(real=0, padded=0)
        clock = Clock()
        trainer(steps, clock, out).train()
    return {"tokens": counts["real"], "seconds": clock.seconds, "steps": steps, "padded_tokens": counts["padded"]}


def _backbone_params() -> int:
    """Parameters of the backbone the children train (the packaged model's; LoRA excluded), read from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedpit.backbone import resolve_model_path
    from fedpit.config import Config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(Config().model.name)))
    return sum(p.numel() for p in model.parameters())


def child(variant: str, batch_size: int, steps: int) -> None:
    import torch

    if variant == "fedpit":
        res = run_fedpit(batch_size, steps)
    else:
        res = run_hf(batch_size, steps, grouped=variant.endswith("grouped"))
    res.update(
        variant=variant,
        threads=torch.get_num_threads(),
        params=_backbone_params(),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.batch_size, args.steps)
        return
    import platform

    import torch
    from machine import lora_train_flops_per_token, machine_peaks

    _, peak = machine_peaks(torch)
    print(f"bf16 matmul peak measured here: {peak / 1e9:.0f} GFLOP/s at {torch.get_num_threads()} threads", flush=True)
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants if rep % 2 == 0 else variants[::-1]:  # alternate the order against drift
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    v,
                    "--steps",
                    str(args.steps),
                    "--batch-size",
                    str(args.batch_size),
                ],
                capture_output=True,
                text=True,
            )
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                sys.exit(f"{v} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            r = json.loads(line[-1][7:])
            results[v].append(r)
            print(
                f"  rep {rep + 1} {v:>19}: {r['tokens'] / r['seconds']:6.1f} real tok/s, "
                f"{r['seconds'] / r['steps']:.2f} s/step",
                flush=True,
            )
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {results[variants[0]][0]['threads']}; {args.steps} steps x batch {args.batch_size}, "
        f"median of {args.repeats}"
    )
    print(
        f"{'variant':>19} {'real tok/s':>10} {'s/step':>7} {'padding':>8} {'peak RSS':>9} {'fedpit is':>10} {'MFU':>6}"
    )
    med = {v: statistics.median(r["tokens"] / r["seconds"] for r in rs) for v, rs in results.items()}
    rows = []
    for v, rs in results.items():
        r = rs[0]
        pad = 1 - r["tokens"] / r["padded_tokens"]
        rss = statistics.median(x["peak_rss_mb"] for x in rs) / 1024
        sps = statistics.median(x["seconds"] / x["steps"] for x in rs)
        ratio = med["fedpit"] / med[v] if "fedpit" in med and v != "fedpit" else None
        mfu = med[v] * lora_train_flops_per_token(r["params"]) / peak
        shown = f"{ratio:.2f}x" if ratio else "-"
        print(f"{v:>19} {med[v]:10.1f} {sps:7.2f} {pad:8.1%} {rss:7.2f} GiB {shown:>10} {mfu:6.1%}")
        rows.append(
            dict(
                variant=v,
                real_tok_per_s=round(med[v], 2),
                s_per_step=round(sps, 3),
                padding=round(pad, 4),
                peak_rss_gib=round(rss, 3),
                fedpit_vs_this=round(ratio, 3) if ratio else None,
                mfu=round(mfu, 4),
                runs=rs,
            )
        )
    if "fedpit" in med and "hf-trainer" in med:
        print(f"fedpit / HF Trainer + peft: {med['fedpit'] / med['hf-trainer']:.2f}x real tokens/s (target 1.5x)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "steps": args.steps,
                    "batch_size": args.batch_size,
                    "repeats": args.repeats,
                    "threads": results[variants[0]][0]["threads"],
                    "bf16_gflops": round(peak / 1e9, 1),
                    "flops_per_token": "4 x parameters",
                    "variants": rows,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
