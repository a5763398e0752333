"""The Flower ClientApp: one data owner's side of every fedpit method.

Node config (``flower-supernode --node-config "..."``; Flower's simulation sets the first two itself):

- ``partition-id``: this client's index (0 .. partition.num_clients-1); seeds and sampling use it;
- ``num-partitions``: informational;
- ``data-file``: this site's own training data (JSON/JSONL; ``data-format``, ``output-field`` optional). Without it,
  the node takes its share of the config's ``data.train`` by the run's partition (the demo / simulation case);
- ``state-dir``: where this node keeps private state (local adapters, synthetic data). Default: the run folder.

Messages: ``query`` returns the client id and its number of examples; ``train`` runs the method's ``client_update``
(the same function the in-process runner calls) and replies with the upload and numeric metrics, nothing else.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..adapters import nbytes
from ..algorithms import ClientState, get_method
from ..algorithms.base import LOCAL_PREFIX
from ..config import Config
from ..data import Example, load_examples
from ..engine import Engine
from ..errors import ConfigError
from ..federation import client_context, client_share, make_engine, save_personal, write_artifacts
from ..rundir import RunDir
from .common import (
    ARRAYS,
    CONFIG,
    METRICS,
    config_of,
    fingerprint,
    from_record,
    informative,
    metric_record,
    node_root,
    record_arrays,
    to_record,
)

log = logging.getLogger("fedpit.flower.client")

_ENGINES: dict[str, Engine] = {}  # one backbone per process (a Ray actor or the site executor keeps it)
_ENGINE_LOCK = threading.Lock()
_DATA: dict[tuple, list[Example]] = {}
_PRIVATE: set[bytes] = set()  # fingerprints of this process's private tensors, for private_guard
# When the site's executor took this message from the SuperNode (wall clock); None in a one-message process.
ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("fedpit_arrived", default=None)
# When the message's content had been downloaded to the site (the executor's clock; None elsewhere).
RECEIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("fedpit_received", default=None)


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
    if ARRIVED.get() is not None and engine_key(cfg) not in _ENGINES:
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


def _register_private(state: Mapping) -> None:
    _PRIVATE.update(fingerprint(t) for t in state.values() if informative(t))


def private_guard(msg: Message, context: Context, call_next) -> Message:
    """Client mod: fail any outgoing message that carries a private tensor (this node's local adapter, before or
    after this round's training) or a private state key. Fitted to every fedpit ClientApp."""
    reply = call_next(msg, context)
    if reply.has_content():
        for name, record in reply.content.array_records.items():
            for key, a in record_arrays(record).items():
                if key.startswith(LOCAL_PREFIX):
                    raise RuntimeError(f"private_guard: outgoing record '{name}' carries private key '{key}'")
                if informative(a) and fingerprint(a) in _PRIVATE:
                    raise RuntimeError(f"private_guard: outgoing tensor '{key}' equals a private adapter tensor")
    return reply


app = ClientApp(mods=[private_guard])


@app.query()
def query(msg: Message, context: Context) -> Message:
    cfg, _ = config_of(msg.content[CONFIG])
    k = client_id(context.node_config)
    n = len(local_examples(cfg, context.node_config, k))
    _prefetch(cfg)
    return Message(RecordDict({METRICS: MetricRecord({"client-id": k, "num-examples": n})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0, entered = time.perf_counter(), time.time()
    arrived = _arrival(entered)
    cfg, r = config_of(msg.content[CONFIG])
    k = client_id(context.node_config)
    method = get_method(cfg.algorithm)
    examples = local_examples(cfg, context.node_config, k)
    warm = engine_key(cfg) in _ENGINES
    engine = cached_engine(cfg)
    global_state = from_record(msg.content.array_records.get(ARRAYS))
    rd = RunDir(node_root(cfg, context.node_config))
    f = rd.latest_client_state(k, r - 1)
    state = ClientState.load(f)
    _register_private(state.local)

    with timed(engine, arrived) as times:
        result = method.client_update(engine, global_state, examples, state, client_context(cfg, method, r, k))

    if result.state:
        result.state.save(rd.client_state_file(k, r))
        _register_private(result.state.local)
        if r == cfg.federation.rounds and result.state.local:  # the personalized model stays here, as a peft folder
            save_personal(cfg, engine, rd.path / "clients" / f"client_{k}" / "final", result.state, k)
    write_artifacts(rd.path / "clients" / f"client_{k}" / f"round_{r:03d}", result.artifacts)
    reply = result.reply
    metrics = {
        **reply.metrics,
        "client-id": k,
        "num-examples": reply.num_examples,
        "bytes-sent": nbytes(reply.adapter),
        "bytes-received": nbytes(global_state),
        "client-seconds": round(time.perf_counter() - t0, 3),
        **_timing(times, arrived, entered, warm),
        "time.delivery-s": round(max(0.0, arrived - msg.metadata.created_at), 3),
    }
    log.info("client %d round %d: %d examples, upload %d bytes", k, r, len(examples), nbytes(reply.adapter))
    return Message(RecordDict({ARRAYS: to_record(reply.adapter), METRICS: metric_record(metrics)}), reply_to=msg)


def _arrival(entered: float) -> float:
    """When this message reached the site's app process: the executor's clock, or the start of a process made for
    this one message (``flwr-clientapp``), else (a simulation actor) when the handler was entered."""
    if ARRIVED.get() is not None:
        return ARRIVED.get()
    if Path(sys.argv[0]).name == "flwr-clientapp":
        import psutil

        return psutil.Process().create_time()
    return entered


def _timing(times: dict, arrived: float, entered: float, warm: bool) -> dict:
    """The reply's ``time.*`` metrics (the server adds ``upload-s`` and writes them under ``timing`` in
    metrics.jsonl)."""
    done = time.time()
    return {
        "time.input-s": round((RECEIVED.get() or arrived) - arrived, 3),  # the content's download to the site
        "time.handover-s": round(entered - arrived, 3),  # Flower: task input, FAB, app (0 in a fresh process)
        "time.first-step-s": round(times.get("first-step-s", done - arrived), 3),
        "time.generate-s": round(times.get("generate-s", 0.0), 3),
        "time.train-s": round(times["train-s"], 3),
        "time.client-s": round(done - arrived, 3),
        "time.sent-at": done,
        "time.warm": int(warm),
        "time.executor": int(ARRIVED.get() is not None),
    }


__all__ = ["ARRIVED", "app", "cached_engine", "client_id", "engine_key", "local_examples", "private_guard"]
