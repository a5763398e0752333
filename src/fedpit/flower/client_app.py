"""The Flower ClientApp: one data owner's side of every fedpit method.

Node config (``flower-supernode --node-config "..."``; Flower's simulation sets the first two itself):

- ``partition-id``: this client's index (0 .. partition.num_clients-1); seeds and sampling use it;
- ``num-partitions``: informational;
- ``data-file``: this site's own training data (JSON/JSONL; ``data-format``, ``output-field`` optional). Without it,
  the node takes its share of the config's ``data.train`` by the run's partition (the demo / simulation case);
- ``state-dir``: where this node keeps private state (local adapters, synthetic data). Default: the run folder.

Messages: ``query`` returns the client id and its number of examples; ``train`` runs the method's ``client_update``
(the same function the in-process runner calls) and replies with the upload and numeric metrics, nothing else.

Flower starts this app in a fresh ``flwr-clientapp`` process for every message, so this module imports only Flower's
public API and numpy: the work itself (:mod:`fedpit.flower.client_work`, torch and the backbone) runs in the site's
long-lived executor when the SuperNode was started by ``fedpit flower node`` (:mod:`fedpit.flower.executor`), and in
this process otherwise (Flower's simulation, where the Ray actor keeps the backbone; a bare ``flower-supernode``).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from . import executor
from .common import (
    ARRAYS,
    CONFIG,
    LOCAL_PREFIX,
    METRICS,
    fingerprint,
    informative,
    record_arrays,
    record_from_parts,
    record_parts,
)

log = logging.getLogger("fedpit.flower.client")

_PRIVATE: set[bytes] = set()  # fingerprints of this site's private tensors, for private_guard


def _register_private(state) -> None:
    _PRIVATE.update(fingerprint(t) for t in state.values() if informative(t))


def private_guard(msg: Message, context: Context, call_next) -> Message:
    """Client mod: fail any outgoing message that carries a private tensor (this node's local adapter, before or
    after this round's training) or a private state key. Fitted to every fedpit ClientApp."""
    reply = call_next(msg, context)
    if reply.has_content():
        check_outgoing(reply.content)
    return reply


def check_outgoing(content: RecordDict) -> None:
    """Raise if an outgoing message's content carries a private state key or a tensor equal to a private one."""
    for name, record in content.array_records.items():
        for key, a in record_arrays(record).items():
            if key.startswith(LOCAL_PREFIX):
                raise RuntimeError(f"private_guard: outgoing record '{name}' carries private key '{key}'")
            if informative(a) and fingerprint(a) in _PRIVATE:
                raise RuntimeError(f"private_guard: outgoing tensor '{key}' equals a private adapter tensor")


app = ClientApp(mods=[private_guard])


def _arrival(entered: float) -> float:
    """When this message reached the site: the start of the process Flower made for it (``flwr-clientapp``), else
    (a simulation actor) when the handler was entered."""
    if Path(sys.argv[0]).name == "flwr-clientapp":
        import psutil

        return psutil.Process().create_time()
    return entered


def request(kind: str, msg: Message, context: Context) -> dict:
    """A message as the plain values :mod:`fedpit.flower.client_work` takes (the same in this process and in the
    executor): the config, the global adapter as record parts, the node config and when the message arrived."""
    received = time.time()
    return {
        "kind": kind,
        "config": dict(msg.content[CONFIG]),
        "arrays": record_parts(msg.content.array_records.get(ARRAYS)),
        "node_config": dict(context.node_config),
        "created_at": msg.metadata.created_at,
        "arrived": _arrival(received),
        "received": received,
    }


def handle(req: dict) -> dict:
    """Run a request in the site's executor if this SuperNode has one (``fedpit flower node``), else here."""
    site = executor.site_dir()
    if site is not None:
        return executor.call(site, {**req, "executor": True})
    from . import client_work

    return getattr(client_work, req["kind"])(req)


@app.query()
def query(msg: Message, context: Context) -> Message:
    out = handle(request("query", msg, context))
    return Message(RecordDict({METRICS: MetricRecord(out["metrics"])}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    out = handle(request("train", msg, context))
    _PRIVATE.update(out["private"])
    content = RecordDict({ARRAYS: record_from_parts(out["arrays"]), METRICS: MetricRecord(out["metrics"])})
    return Message(content, reply_to=msg)


__all__ = ["app", "handle", "private_guard", "request"]
