"""The Flower ServerApp: fedpit's round loop over a Flower Grid.

Per round it asks :func:`fedpit.federation.round_plan` which clients train (the same draw as ``fedpit run``), sends each
one's SuperNode the global adapter and the resolved config, waits up to ``flower.round_timeout_s``, and aggregates
the replies that arrived with the method's ``server_aggregate``; optionally through Flower's
``DifferentialPrivacyServerSideFixedClipping`` wrapper. A sampled client that is not connected, errs or times out is
recorded as dropped in ``metrics.jsonl``; a node that (re)connects later is discovered at the next round. The run
folder has the same layout as ``fedpit run`` and ``resume = true`` continues after the last completed round.

Run config (``[tool.flwr.app.config]`` or ``flwr run ... --run-config``): ``config`` (a fedpit TOML, "" = the
embedded demo), ``resume`` (bool), and any fedpit key such as ``federation.rounds`` or ``output_dir``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from ..adapters import StateDict, nbytes
from ..algorithms import ClientReply, Method, get_method
from ..config import Config
from ..engine import Engine
from ..errors import ConfigError, FedpitError
from ..federation import (Prepared, client_row, encoded_test, evaluate_round, finish_run, make_engine, named,
                          open_run, prepare, round_plan, round_row)
from ..rundir import RunDir
from .common import ARRAYS, CONFIG, METRICS, config_from_run_config, config_record, from_record, to_record

log = logging.getLogger("fedpit.flower.server")
TRANSPORT = "flower"


class FedpitStrategy(Strategy):
    """A fedpit method as a Flower strategy: ``configure_train`` addresses the round's clients,
    ``aggregate_train`` calls the method's ``server_aggregate``. Being a Strategy lets Flower's DP wrappers wrap it."""

    def __init__(self, method: Method):
        self.method = method
        self.targets: dict[int, int] = {}  # client id -> node id, set by the server before each round
        self.global_state: StateDict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return [Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=node,
                        message_type=MessageType.TRAIN) for _, node in sorted(self.targets.items())]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        ordered = sorted(replies, key=lambda m: int(m.content[METRICS]["client-id"]))  # the in-process order
        uploads = [ClientReply(from_record(m.content.array_records.get(ARRAYS)), int(m.content[METRICS]["num-examples"]))
                   for m in ordered]
        new = self.method.server_aggregate(self.global_state, uploads)
        return to_record(new), MetricRecord({"clients": len(uploads)})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self) -> None:
        log.info("fedpit strategy: %s", self.method.name)


def _dp_wrap(cfg: Config, strategy: FedpitStrategy, method: Method) -> Strategy:
    fl = cfg.flower
    if fl.dp_clipping_norm <= 0:
        return strategy
    if not method.shares_adapter:
        raise ConfigError(f"flower.dp_clipping_norm: {method.name} shares nothing, so there is nothing to privatise")
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    sampled = len(round_plan(cfg, method, 1)[0])
    return DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=fl.dp_noise_multiplier,
                                                      clipping_norm=fl.dp_clipping_norm, num_sampled_clients=sampled)


class FlowerServer:
    """Runs (or resumes) one fedpit job over a Flower Grid: the same run folder as ``fedpit run``, with the clients
    on SuperNodes."""

    def __init__(self, cfg: Config, grid: Grid, *, resume: bool = False):
        self.method: Method = get_method(cfg.algorithm)
        if self.method.pools_data:
            raise ConfigError(f"algorithm: {cfg.algorithm} pools every client's data in one place; it is a reference "
                              "for `fedpit run`, not something to deploy")
        if resume and not cfg.run_name:
            raise ConfigError("resume: needs run_name (the run folder to continue)")
        self.cfg, self.grid, self.resume = named(cfg, TRANSPORT), grid, resume
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.node_errors: dict[int, str] = {}  # node id -> why it cannot take part

    # ------------------------------------------------------------------------------------------ nodes
    def _send(self, messages: list[Message], timeout: float) -> list[Message]:
        return list(self.grid.send_and_receive(messages, timeout=timeout)) if messages else []

    def discover(self) -> dict[int, int]:
        """Map client ids to connected nodes; ask new nodes who they are (a restarted node is new)."""
        connected = set(self.grid.get_node_ids())
        self.nodes = {k: n for k, n in self.nodes.items() if n in connected}
        new = sorted(connected - set(self.nodes.values()) - set(self.node_errors))
        q = [Message(RecordDict({CONFIG: config_record(self.cfg, 0)}), dst_node_id=n, message_type=MessageType.QUERY)
             for n in new]
        for reply in self._send(q, min(self.cfg.flower.round_timeout_s, 300.0)):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.node_errors[node] = reply.error.reason
                log.warning("node %d cannot take part: %s", node, reply.error.reason)
                continue
            k = int(reply.content[METRICS]["client-id"])
            if k in self.nodes and self.nodes[k] != node:
                log.warning("client id %d claimed by nodes %d and %d; using the newer one", k, self.nodes[k], node)
            self.nodes[k] = node
        return self.nodes

    def wait_for_nodes(self) -> None:
        deadline = time.monotonic() + self.cfg.flower.wait_for_nodes_s
        want = self.cfg.partition.num_clients
        while True:
            self.discover()
            if len(self.nodes) >= want or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        log.info("%d of %d clients connected: %s", len(self.nodes), want, sorted(self.nodes))
        if len(self.nodes) < self.cfg.flower.min_replies:
            raise FedpitError(f"only {len(self.nodes)} client node(s) connected within flower.wait_for_nodes_s = "
                              f"{self.cfg.flower.wait_for_nodes_s} s (flower.min_replies = {self.cfg.flower.min_replies})")

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        prep = prepare(cfg)  # the partition (written to partition.json, read by the nodes) and the held-out set
        engine = make_engine(cfg)
        resume = Path(cfg.output_dir) / cfg.run_name if self.resume else None
        rd, start, global_state = open_run(cfg, engine, prep, resume, TRANSPORT)
        test_enc = encoded_test(cfg, engine, prep)
        strategy = FedpitStrategy(self.method)
        wrapped = _dp_wrap(cfg, strategy, self.method)
        try:
            self.wait_for_nodes()
            for r in range(start, cfg.federation.rounds + 1):
                global_state = self.round(r, rd, prep, engine, strategy, wrapped, global_state, test_enc)
        except BaseException as e:
            rd.set_progress(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        return finish_run(cfg, self.method, engine, rd, prep, global_state, test_enc, transport=TRANSPORT,
                          t_start=t_start)

    def round(self, r: int, rd: RunDir, prep: Prepared, engine: Engine, strategy: FedpitStrategy, wrapped: Strategy,
              global_state: StateDict, test_enc: list) -> StateDict:
        """One round: send the global adapter to the sampled clients' nodes, aggregate the replies that arrived,
        evaluate, and commit (dropped clients are recorded)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        chosen, lr = round_plan(cfg, self.method, r)
        self.discover()
        strategy.targets = {k: self.nodes[k] for k in chosen if k in self.nodes}
        if len(strategy.targets) < cfg.flower.min_replies:  # cannot reach quorum: fail now, not after the timeout
            raise FedpitError(f"round {r}: only {len(strategy.targets)} of the sampled clients {chosen} are connected, "
                              f"fewer than flower.min_replies = {cfg.flower.min_replies}")
        strategy.global_state = global_state
        messages = list(wrapped.configure_train(r, to_record(global_state), config_record(cfg, r), self.grid))
        ok, dropped, errors = self._collect(r, chosen, strategy.targets, self._send(messages, cfg.flower.round_timeout_s))
        arrays, _ = wrapped.aggregate_train(r, ok)
        new_global = from_record(arrays) if arrays is not None and len(arrays) else global_state
        down = nbytes(global_state) if self.method.shares_adapter else 0
        rows = [_client_row(r, lr, m, down) for m in sorted(ok, key=_client_of)]
        test_loss, extraction = evaluate_round(cfg, self.method, engine, rd, prep, r, new_global, test_enc)
        rows.append(round_row(r, lr, rows, chosen=chosen, trained=sorted(_client_of(m) for m in ok),
                              bytes_down=down * len(strategy.targets), t0=t0, test_loss=test_loss,
                              extraction=extraction, dropped=dropped, errors=errors))
        rd.commit_round(r, new_global, rows)
        log.info("round %d: %d/%d clients, train loss %s, held-out loss %s", r, len(ok), len(chosen),
                 _fmt(rows[-1]["train_loss"]), _fmt(test_loss))
        return new_global

    def _collect(self, r: int, chosen: list[int], targets: dict[int, int], replies: list[Message]):
        """(successful replies, dropped client ids, errors by client id); fails the round below quorum."""
        by_node = {n: k for k, n in targets.items()}
        ok = [m for m in replies if not m.has_error()]
        errors = {by_node.get(m.metadata.src_node_id, -1): m.error.reason for m in replies if m.has_error()}
        answered = {_client_of(m) for m in ok}
        dropped = sorted(k for k in chosen if k not in answered)
        for k in dropped:
            log.warning("round %d: client %d dropped (%s)", r, k, errors.get(k) or
                        ("not connected" if k not in targets else "no reply before flower.round_timeout_s"))
        if len(ok) < self.cfg.flower.min_replies:
            raise FedpitError(f"round {r}: {len(ok)} client(s) replied, fewer than flower.min_replies = "
                              f"{self.cfg.flower.min_replies}; dropped {dropped}")
        return ok, dropped, errors


def _client_of(m: Message) -> int:
    return int(m.content[METRICS]["client-id"])


def _client_row(r: int, lr: float, m: Message, down: int) -> dict:
    """A client's metrics line from its reply (the same keys as in-process, plus the bytes on the wire)."""
    met = dict(m.content[METRICS])
    k, n = int(met.pop("client-id")), int(met.pop("num-examples"))
    sent, seconds = int(met.pop("bytes-sent", 0)), float(met.pop("client-seconds", 0.0))
    met.pop("bytes-received", None)
    row = client_row(r, k, lr, ClientReply({}, n, met), seconds=seconds, received=down, sent=sent)
    return {**row, "wire_bytes_sent": m.content.array_records[ARRAYS].count_bytes()}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def make_server_app(base: Mapping | None = None) -> ServerApp:
    """A ServerApp whose run config is ``base`` updated with Flower's run config (``base`` is how the simulation
    and tests pass a config without a pyproject)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context) -> None:
        cfg, resume = config_from_run_config(context.run_config, base)
        FlowerServer(cfg, grid, resume=resume).run()

    return server


app = make_server_app()

__all__ = ["FedpitStrategy", "FlowerServer", "app", "make_server_app"]
