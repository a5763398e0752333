"""What the ServerApp and ClientApp share: message layout, record conversion, and configuration.

A train or query message carries the server's resolved fedpit config as TOML (``config["fedpit-config"]``), so every
node works from exactly the server's settings; a node only adds its own facts (which client it is, where its data and
private state live) from its node config.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from ..config import Config, config_from_dict, load_config, set_value, to_toml

if TYPE_CHECKING:  # torch is imported where tensors are made, so the ClientApp's guard can load without it
    from ..adapters import StateDict
from ..errors import ConfigError

CONFIG_KEY = "fedpit-config"
ROUND_KEY = "round"
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
# fedpit.algorithms.base.LOCAL_PREFIX (the private adapter's keys), here without importing torch: the ClientApp's
# process stays light (tests/test_flower.py checks that both are the same)
LOCAL_PREFIX = "local."
# Keys of [tool.flwr.app.config] / --run-config that are not fedpit config keys.
APP_KEYS = {"config", "resume", "set"}


def config_from_run_config(run_config: Mapping, base: Mapping | None = None) -> tuple[Config, bool]:
    """(fedpit config, resume?) from Flower's run config.

    ``config`` names a fedpit TOML ("" = the embedded demo); ``set`` holds overrides as ``"key=value; key=value"``
    (Flower only accepts keys declared in the app's pyproject, so fedpit keys travel inside this one string);
    any other key is taken as a fedpit key itself (``federation.rounds``; ``-`` may stand for ``_``)."""
    merged = {**(base or {}), **dict(run_config)}
    cfg = load_config(str(merged["config"]) if merged.get("config") else None)
    pairs = [(k, v) for k, v in merged.items() if k not in APP_KEYS]
    for item in str(merged.get("set") or "").replace("\n", ";").split(";"):
        if item.strip():
            if "=" not in item:
                raise ConfigError(f"run config 'set': '{item.strip()}' is not key=value")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v.strip()))
    for key, value in pairs:
        set_value(cfg, key.replace("-", "_"), value)
    cfg.validate()
    return cfg, bool(merged.get("resume", False))


def config_record(cfg: Config, round_idx: int) -> ConfigRecord:
    return ConfigRecord({CONFIG_KEY: to_toml(cfg), ROUND_KEY: round_idx})


def config_of(record: ConfigRecord) -> tuple[Config, int]:
    try:
        cfg = config_from_dict(tomllib.loads(str(record[CONFIG_KEY])))
    except (KeyError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"message config: no valid '{CONFIG_KEY}' ({e})") from None
    return cfg, int(record.get(ROUND_KEY, 0))


PACKED = "fedpit.packed:"  # an ArrayRecord's one key: this prefix, then [[name, shape], ...] as JSON


def to_record(state: StateDict) -> ArrayRecord:
    """An adapter as one ArrayRecord. Float32 tensors travel as one flat array (the key says how to cut it): Flower
    moves every array as its own object, one request per hop, which on SmolLM2-135M's 240 LoRA tensors cost far
    more than the bytes. Values are unchanged; Flower's DP wrappers (one global norm, element-wise noise, keys kept)
    see the same numbers."""
    import torch

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if len(tensors) > 1 and all(t.dtype == torch.float32 for t in tensors.values()):
        layout = json.dumps([[k, list(t.shape)] for k, t in tensors.items()], separators=(",", ":"))
        flat = torch.cat([t.reshape(-1) for t in tensors.values()]).numpy()
        return ArrayRecord({PACKED + layout: Array(flat)})
    return ArrayRecord(torch_state_dict=tensors)


def record_parts(record: ArrayRecord | None) -> list[tuple] | None:
    """A record as plain values, ``[(key, dtype, shape, stype, data), ...]``: what crosses the pipe between the
    ClientApp and the site's executor. :func:`record_from_parts` makes the same record again, byte for byte."""
    if record is None:
        return None
    return [(k, a.dtype, tuple(a.shape), a.stype, bytes(a.data)) for k, a in record.items()]


def record_from_parts(parts: list[tuple] | None) -> ArrayRecord | None:
    if parts is None:
        return None
    return ArrayRecord({k: Array(dtype=d, shape=tuple(s), stype=st, data=b) for k, d, s, st, b in parts})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """A record's tensors by name as numpy arrays (a packed record cut back into its tensors)."""
    if len(record) == 1:
        ((key, arr),) = record.items()
        if key.startswith(PACKED):
            flat, out, i = arr.numpy(), {}, 0
            for name, shape in json.loads(key[len(PACKED) :]):
                n = math.prod(shape)
                out[name] = flat[i : i + n].reshape(shape)
                i += n
            if i != flat.size:
                raise ValueError(f"packed record: the layout covers {i} values, the array has {flat.size}")
            return out
    return {k: a.numpy() for k, a in record.items()}


def from_record(record: ArrayRecord | None) -> StateDict:
    if record is None or len(record) == 0:
        return {}
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in record_arrays(record).items()}


def flat_metrics(metrics: Mapping, prefix: str = "") -> dict:
    """Numeric leaves of a (nested) metrics dict with dotted keys: what a MetricRecord can carry."""
    out = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not np.isfinite(value):
                continue
            out[name] = value
    return out


def metric_record(metrics: Mapping) -> MetricRecord:
    return MetricRecord(flat_metrics(metrics))


def _numpy(t) -> np.ndarray:
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def fingerprint(t) -> bytes:
    """A content hash of one tensor (as float32), to recognise a private tensor in an outgoing message."""
    import hashlib

    arr = np.asarray(_numpy(t), dtype=np.float32)
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).digest()


def informative(t) -> bool:
    """A tensor whose content says something (not all one value: zero-initialised LoRA B matrices leak nothing)."""
    arr = _numpy(t).reshape(-1)
    return arr.size > 1 and bool((arr != arr[0]).any())


def node_root(cfg: Config, node_config: Mapping) -> Path:
    """The folder where a node keeps its private state for this run: ``<state-dir>/<run_name>`` when the node
    config names a ``state-dir`` (a real site), else the run folder itself (one machine: the same layout as
    ``fedpit run``, ``clients/client_K/``)."""
    if node_config.get("state-dir"):
        return Path(str(node_config["state-dir"])) / cfg.run_name
    return Path(cfg.output_dir) / cfg.run_name


__all__ = [
    "ARRAYS",
    "CONFIG",
    "METRICS",
    "config_from_run_config",
    "config_of",
    "config_record",
    "fingerprint",
    "flat_metrics",
    "from_record",
    "informative",
    "metric_record",
    "node_root",
    "record_arrays",
    "record_from_parts",
    "record_parts",
    "to_record",
]
