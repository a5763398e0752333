"""GPU smoke test: training, batched generation and a 2-round federated run on CUDA in bf16, with a tiny random model.

Nothing in CI depends on a GPU; this script is what to run when one is at hand (a few minutes at most). Each stage
runs on its own and reports ``ok`` or what broke, so one failure does not hide the others; the exit code is the number
of failed stages.

    .venv/bin/python benchmarks/gpu_smoke.py [--device cuda] [--dtype bf16] [--json PATH]

``--device cpu`` runs the same stages on the CPU (a check of the script itself, not of the GPU path).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import traceback

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def tiny_model(folder: str) -> str:
    """The unit tests' tiny random LLaMA, with the packaged SmolLM2 tokenizer."""
    from fedpit.backbone import resolve_model_path, save_tiny_llama

    return save_tiny_llama(folder, resolve_model_path("smollm2-135m-instruct"))


def overrides(model: str, device: str, dtype: str, out: str, algorithm: str) -> list[str]:
    return [
        f"algorithm={algorithm}",
        f"model.name={model}",
        f"model.device={device}",
        f"model.dtype={dtype}",
        "model.max_seq_len=128",
        f"output_dir={out}",
        f"run_name=smoke-{algorithm}",
        "federation.rounds=2",
        "train.local_steps=2",
        "train.batch_size=2",
        "eval.max_examples=8",
        "eval.extraction_n=4",
        "selfgen.num_instructions=2",
        "selfgen.measure=false",
        "lora.r=4",
        "lora.alpha=8",
    ]


def stage_train(cfg) -> dict:
    import torch

    from fedpit.federation import make_engine, prepare

    prep = prepare(cfg)
    engine = make_engine(cfg)
    before = {k: v.detach().float().cpu().clone() for k, v in engine.adapter_state().items()}
    stats = engine.train(prep.train[:8], lr=1e-3, steps=3, batch_size=4)
    after = engine.adapter_state()
    moved = max((after[k].float().cpu() - before[k]).abs().max().item() for k in before)
    devices = {str(p.device) for p in engine.trainable_parameters()}
    assert all(torch.isfinite(v).all() for v in after.values()), "non-finite adapter after training"
    assert moved > 0, "training did not change the adapter"
    return {"loss": stats.as_dict().get("loss"), "adapter_max_change": moved, "param_devices": sorted(devices)}


def stage_generate(cfg) -> dict:
    from fedpit.federation import make_engine
    from fedpit.generate import generate

    engine = make_engine(cfg)
    prompts = [f"Task {i}: write a short sentence about item {i}.\nAnswer:" for i in range(12)]
    out = generate(engine.model, engine.tokenizer, prompts, max_new_tokens=16, batch_size=8, stop_strings=["\n\n"])
    assert len(out) == len(prompts), "one completion per prompt"
    return {"completions": len(out), "first": out[0][:60]}


def stage_run(cfg) -> dict:
    from fedpit.runner import run

    summary = run(cfg, show_progress=False)
    return {"keys": sorted(summary)[:8]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()

    import torch

    from fedpit.backbone import quiet_libraries
    from fedpit.config import load_config

    quiet_libraries()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: torch sees no CUDA device (use --device cpu to check the script itself)")
    info = {"torch": torch.__version__, "device": args.device, "dtype": args.dtype}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = tiny_model(os.path.join(tmp, "tiny"))
        stages = [
            ("train", stage_train, "fedit"),
            ("generate", stage_generate, "fedit"),
            ("run fedit 2 rounds", stage_run, "fedit"),
            ("run fedpit 2 rounds", stage_run, "fedpit"),
        ]
        for name, fn, algorithm in stages:
            cfg = load_config(overrides=overrides(model, args.device, args.dtype, os.path.join(tmp, "runs"), algorithm))
            t0 = time.perf_counter()
            try:
                detail, ok = fn(cfg), True
            except Exception as e:  # noqa: BLE001 - a smoke test reports every failure and goes on
                detail, ok = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}, False
            secs = time.perf_counter() - t0
            results[name] = {"ok": ok, "seconds": round(secs, 2), **detail}
            print(f"{name:>22}: {'ok' if ok else 'FAILED'} in {secs:.1f} s  {detail.get('error', '')}")
    if torch.cuda.is_available():
        info["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    failed = sum(not r["ok"] for r in results.values())
    print(f"{len(results) - failed} of {len(results)} stages ok")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"info": info, "stages": results}, f, indent=2)
    raise SystemExit(failed)


if __name__ == "__main__":
    main()
