"""A site's side of every fedpit method: what the ClientApp's ``query`` and ``train`` messages do, on plain values.

:mod:`fedpit.flower.client_app` turns a message into a request (the config, the global adapter as record parts, the
node config, timestamps) and the reply back into a message. The work in between happens here, either in the
ClientApp's own process (Flower's simulation, or a site without an executor) or in the site's long-lived executor
(:mod:`fedpit.flower.executor`), where the caches below (backbone and engine, tokenized site data) live across the
messages of a run and across runs. Both paths run these same functions on the same values.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from ..adapters import nbytes
from ..algorithms import ClientState, get_method
from ..config import Config
from ..data import Example, load_examples
from ..engine import Engine
from ..errors import ConfigError
from ..federation import client_context, client_share, make_engine, save_personal, write_artifacts
from ..rundir import RunDir
from .common import (
    config_of,
    fingerprint,
    flat_metrics,
    from_record,
    informative,
    node_root,
    record_from_parts,
    record_parts,
    to_record,
)

log = logging.getLogger("fedpit.flower.client")

_ENGINES: dict[str, Engine] = {}  # one backbone per process (a Ray actor or the site's executor keeps it)
_ENGINE_LOCK = threading.Lock()
_DATA: dict[tuple, list[Example]] = {}


def client_id(node_config: Mapping) -> int:
    if "partition-id" not in node_config:
        raise ConfigError(
            "node config: 'partition-id' is missing (start the SuperNode with --node-config \"partition-id=K\")"
        )
    try:
        return int(node_config["partition-id"])
    except (TypeError, ValueError):
        raise ConfigError(f"node config: partition-id '{node_config['partition-id']}' is not an integer") from None


def _backbone_files(name: str) -> tuple:
    """Size and modification time of every file of a local backbone folder (empty for a hub id or alias)."""
    folder = Path(name)
    if not folder.is_dir():
        return ()
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))


def engine_key(cfg: Config) -> str:
    """What an engine is built from: the backbone (name or folder, dtype, device, template, length; and a local
    folder's files, so weights replaced in place are not served stale), the LoRA shape and the initial-adapter seed."""
    return repr((cfg.model, cfg.lora, cfg.seed, _backbone_files(cfg.model.name)))


def cached_engine(cfg: Config) -> Engine:
    """:func:`fedpit.federation.make_engine`, built once per process for a given :func:`engine_key` (a new key
    drops the old engine first: one backbone in memory)."""
    key = engine_key(cfg)
    with _ENGINE_LOCK:
        if key not in _ENGINES:
            _ENGINES.clear()
            log.info("loading the backbone %s", cfg.model.name)
            _ENGINES[key] = make_engine(cfg)
        return _ENGINES[key]


def _prefetch(cfg: Config) -> None:
    """In a long-lived executor, start loading the backbone when the run's first message (the query) arrives, so
    the first training message finds it loaded."""
    if engine_key(cfg) not in _ENGINES:
        threading.Thread(target=cached_engine, args=(cfg,), name="fedpit-prefetch", daemon=True).start()


@contextlib.contextmanager
def timed(engine: Engine, arrived: float):
    """Per-message timing (wall-clock seconds since the message arrived): ``first-step-s`` when the first training
    micro-batch starts, ``train-s`` inside :meth:`Engine.train`, ``generate-s`` from the start of the method's
    client update to its first training call (self-generation and selection; about 0 for FedIT)."""
    out = {"start": time.time(), "train-s": 0.0}
    train, accumulate = engine.train, engine._accumulate

    def timed_train(*a, **kw):
        t = time.time()
        out.setdefault("generate-s", t - out["start"])
        try:
            return train(*a, **kw)
        finally:
            out["train-s"] += time.time() - t

    def timed_accumulate(*a, **kw):
        out.setdefault("first-step-s", time.time() - arrived)
        return accumulate(*a, **kw)

    engine.train, engine._accumulate = timed_train, timed_accumulate
    try:
        yield out
    finally:
        del engine.train, engine._accumulate


def local_examples(cfg: Config, node_config: Mapping, k: int) -> list[Example]:
    """This node's private training examples: its own ``data-file``, or its share of the run's partition."""
    data_file = str(node_config.get("data-file") or "")
    key = (
        data_file,
        str(node_config.get("data-format", "auto")),
        str(node_config.get("output-field", "")),
        repr((cfg.data, cfg.partition, cfg.seed)),
        k,
    )
    if key not in _DATA:
        if data_file:
            _DATA[key] = load_examples(
                data_file,
                format=str(node_config.get("data-format", "auto")),
                output_field=str(node_config.get("output-field", "")) or cfg.data.output_field or None,
                on_duplicate=cfg.data.on_duplicate,
            )
        else:
            _DATA[key] = client_share(cfg, k)
    return _DATA[key]


def _private(state: Mapping) -> list[bytes]:
    """Fingerprints of a state's informative tensors: what :func:`~fedpit.flower.client_app.private_guard` blocks."""
    return [fingerprint(t) for t in state.values() if informative(t)]


def query(req: Mapping) -> dict:
    """A ``query`` message: which client this node is and how many examples it has."""
    cfg, _ = config_of(req["config"])
    k = client_id(req["node_config"])
    n = len(local_examples(cfg, req["node_config"], k))
    if req.get("executor"):
        _prefetch(cfg)
    return {"metrics": {"client-id": k, "num-examples": n}}


def train(req: Mapping) -> dict:
    """A ``train`` message: the method's ``client_update`` (the function the in-process runner calls) on this
    node's data; the private state stays on this node's disk. Returns the upload (record parts), numeric metrics
    and the fingerprints of the private tensors it saw."""
    t0, entered = time.perf_counter(), time.time()
    arrived = req["arrived"]
    cfg, r = config_of(req["config"])
    k = client_id(req["node_config"])
    method = get_method(cfg.algorithm)
    examples = local_examples(cfg, req["node_config"], k)
    warm = engine_key(cfg) in _ENGINES
    engine = cached_engine(cfg)
    global_state = from_record(record_from_parts(req["arrays"]))
    rd = RunDir(node_root(cfg, req["node_config"]))
    state = ClientState.load(rd.latest_client_state(k, r - 1))
    private = _private(state.local)

    with timed(engine, arrived) as times:
        result = method.client_update(engine, global_state, examples, state, client_context(cfg, method, r, k))

    if result.state:
        result.state.save(rd.client_state_file(k, r))
        private += _private(result.state.local)
        if r == cfg.federation.rounds and result.state.local:  # the personalized model stays here, as a peft folder
            save_personal(cfg, engine, rd.client_final(k), result.state, k)
    write_artifacts(rd.client_round_dir(k, r), result.artifacts)
    reply = result.reply
    metrics = {
        **reply.metrics,
        "client-id": k,
        "num-examples": reply.num_examples,
        "bytes-sent": nbytes(reply.adapter),
        "bytes-received": nbytes(global_state),
        "client-seconds": round(time.perf_counter() - t0, 3),
        **_timing(times, req, entered, warm),
        "time.delivery-s": round(max(0.0, arrived - req["created_at"]), 3),
    }
    log.info("client %d round %d: %d examples, upload %d bytes", k, r, len(examples), nbytes(reply.adapter))
    return {"arrays": record_parts(to_record(reply.adapter)), "metrics": flat_metrics(metrics), "private": private}


def _timing(times: dict, req: Mapping, entered: float, warm: bool) -> dict:
    """The reply's ``time.*`` metrics (the server adds ``upload-s`` and writes them under ``timing`` in
    metrics.jsonl). ``arrived``: the ClientApp's process started (or, in a simulation actor, the handler was
    entered); ``received``: the message was in the ClientApp's hands; ``entered``: this function started."""
    done, arrived = time.time(), req["arrived"]
    return {
        "time.input-s": round(req["received"] - arrived, 3),  # Flower: task input, message, FAB, the app's import
        "time.handover-s": round(entered - arrived, 3),  # the above, and the hand-over to the executor
        "time.first-step-s": round(times.get("first-step-s", done - arrived), 3),
        "time.generate-s": round(times.get("generate-s", 0.0), 3),
        "time.train-s": round(times["train-s"], 3),
        "time.client-s": round(done - arrived, 3),
        "time.sent-at": done,
        "time.warm": int(warm),
        "time.executor": int(bool(req.get("executor"))),
    }


__all__ = ["cached_engine", "client_id", "engine_key", "local_examples", "query", "train"]
