"""Plain adapter state dicts: what travels between clients and server, and how it is averaged, sized and stored.

A state dict here is ``dict[str, torch.Tensor]`` of LoRA tensors (fp32, CPU), keyed as peft's
``get_peft_model_state_dict`` keys them. Nothing in this module needs a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import TrainingError
from .fsutil import atomic_path

StateDict = dict[str, torch.Tensor]


def clone_state(state: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.items()}


def weighted_average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> StateDict:
    """FedAvg: sum_k w_k * state_k / sum_k w_k, tensor by tensor (LoRA A and B averaged separately).

    Accumulates in float64 so the result does not depend on client order beyond fp32 rounding of the output.
    """
    if not states:
        raise ValueError("nothing to average: no client returned an adapter")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != set(keys):
            missing = sorted(set(keys) ^ set(s))[:3]
            raise ValueError(f"state {i} has different keys from state 0 (e.g. {missing})")
    out: StateDict = {}
    for k in keys:
        acc = torch.zeros_like(states[0][k], dtype=torch.float64)
        for s, w in zip(states, weights):
            acc += s[k].to(torch.float64) * (w / total)
        out[k] = acc.to(torch.float32)
    return out


def mix(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], beta: float) -> StateDict:
    """beta * a + (1 - beta) * b, tensor by tensor; beta = 1 returns exact copies of ``a``."""
    if beta == 1.0:
        return clone_state(a)
    return weighted_average([a, b], [beta, 1.0 - beta])


def nbytes(state: Mapping[str, torch.Tensor]) -> int:
    """Bytes of tensor payload (what a transport sends, before framing)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def check_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise TrainingError naming ``what`` when a tensor of ``state`` holds nan or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingError(f"{what}: non-finite values (nan/inf) in {len(bad)} tensor(s), e.g. {bad[0]}")


def max_abs_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def save_state(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write safetensors atomically (:func:`fedpit.fsutil.atomic_path`: a crash never leaves a truncated file under
    the final name, and two writers of one file never share a temporary name)."""
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (metadata or {}).items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=meta)


def load_state(path: str | os.PathLike) -> StateDict:
    return load_file(str(path))
