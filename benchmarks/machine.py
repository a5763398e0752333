"""This CPU's (or GPU's) ceilings, measured in the calling process at its current thread count, for the benchmarks'
roofline and utilization figures: read bandwidth (sum of a 1 GiB tensor) and the bf16 matrix-multiply peak (2048^3).
Imported by the benchmark scripts (their own folder is on ``sys.path`` when they run)."""

from __future__ import annotations

import time


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def machine_peaks(torch) -> tuple[float, float]:
    """(read bandwidth in bytes/s, bf16 matmul FLOP/s), best of 3, at the current thread count."""
    x = torch.ones(256 * 1024 * 1024, dtype=torch.float32)  # 1 GiB
    x.sum()
    bw = max(x.numel() * 4 / _timed(x.sum) for _ in range(3))
    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ a
    peak = max(2 * 2048**3 / _timed(lambda: torch.matmul(a, a)) for _ in range(3))
    return bw, peak


def lora_train_flops_per_token(params: int) -> int:
    """Model FLOPs of one trained token with LoRA: forward (2 x params) plus the backward pass through the frozen
    weights to the adapters (another 2 x params; no weight gradients for the frozen weights). The adapters' own few
    FLOPs are left out, and prompt tokens count as trained tokens (the backward runs through them too)."""
    return 4 * params
