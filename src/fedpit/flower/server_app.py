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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from .. import federation as fed
from ..adapters import StateDict, nbytes
from ..algorithms import ClientReply, Method, get_method
from ..config import Config
from ..errors import ConfigError, FedpitError
from ..rundir import RunDir
from .common import (
    ARRAYS,
    CONFIG,
    METRICS,
    config_from_run_config,
    config_record,
    from_record,
    metric_record,
    to_record,
)

log = logging.getLogger("fedpit.flower.server")
TRANSPORT = "flower"


class FedpitStrategy(Strategy):
    """A fedpit method as a Flower strategy, shaped like Flower's ``FedAvg``:

    - ``configure_train`` samples the round's clients (fedpit's seeded draw, the in-process runner's), maps them to
      connected nodes (new nodes are asked which client they are) and addresses a train message to each;
    - ``check_replies`` sorts the replies into answers, dropped clients and errors, and fails below quorum;
      ``aggregate_train`` calls the method's ``server_aggregate`` on the well-formed answers, in client order;
    - ``evaluate_fn(server_round, arrays)`` is the server-side evaluation, as in ``Strategy.start``.

    Being a Strategy lets Flower's DP wrappers wrap it."""

    def __init__(
        self, cfg: Config, method: Method, evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
    ):
        self.cfg, self.method, self.evaluate_fn = cfg, method, evaluate_fn
        self.nodes: dict[int, int] = {}  # client id -> node id
        self.node_errors: dict[int, str] = {}  # node id -> why it cannot take part
        self.current: StateDict = {}  # the global adapter the round started from
        self.sampled: list[int] = []
        self.targets: dict[int, int] = {}  # sampled client id -> node id, this round
        self.dropped: list[int] = []
        self.errors: dict[int, str] = {}

    # ------------------------------------------------------------------------------------------ nodes
    def discover(self, grid: Grid) -> dict[int, int]:
        """Map client ids to connected nodes; ask new nodes who they are (a restarted node is new)."""
        connected = set(grid.get_node_ids())
        self.nodes = {k: n for k, n in self.nodes.items() if n in connected}
        new = sorted(connected - set(self.nodes.values()) - set(self.node_errors))
        q = [
            Message(RecordDict({CONFIG: config_record(self.cfg, 0)}), dst_node_id=n, message_type=MessageType.QUERY)
            for n in new
        ]
        for reply in exchange(grid, q, min(self.cfg.flower.round_timeout_s, 300.0))[0]:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.node_errors[node] = reply.error.reason
                log.warning("node %d cannot take part: %s", node, reply.error.reason)
                continue
            k = _client_of(reply)
            if k in self.nodes and self.nodes[k] != node:
                log.warning("client id %d claimed by nodes %d and %d; using the newer one", k, self.nodes[k], node)
            self.nodes[k] = node
        return self.nodes

    def wait_for_nodes(self, grid: Grid) -> None:
        fl = self.cfg.flower
        deadline = time.monotonic() + fl.wait_for_nodes_s
        want = self.cfg.partition.num_clients
        while len(self.discover(grid)) < want and time.monotonic() < deadline:
            time.sleep(1.0)
        log.info("%d of %d clients connected: %s", len(self.nodes), want, sorted(self.nodes))
        if len(self.nodes) < fl.min_replies:
            raise FedpitError(
                f"only {len(self.nodes)} client node(s) connected within flower.wait_for_nodes_s = "
                f"{fl.wait_for_nodes_s} s (flower.min_replies = {fl.min_replies})"
            )

    # ------------------------------------------------------------------------------------------ train
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = from_record(arrays)
        self.sampled, _ = fed.round_plan(self.cfg, self.method, server_round)
        self.discover(grid)
        self.targets = {k: self.nodes[k] for k in self.sampled if k in self.nodes}
        if len(self.targets) < self.cfg.flower.min_replies:  # cannot reach quorum: fail now, not after the timeout
            raise FedpitError(
                f"round {server_round}: only {len(self.targets)} of the sampled clients {self.sampled} "
                f"are connected, fewer than flower.min_replies = {self.cfg.flower.min_replies}"
            )
        return [
            Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=node, message_type=MessageType.TRAIN)
            for _, node in sorted(self.targets.items())
        ]

    def check_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """The well-formed answers; records the round's dropped clients and errors; fails below quorum."""
        by_node = {n: k for k, n in self.targets.items()}
        replies = list(replies)
        ok = [m for m in replies if _well_formed(m)]
        self.errors = {
            by_node.get(m.metadata.src_node_id, -1): m.error.reason if m.has_error() else "malformed reply"
            for m in replies
            if not _well_formed(m)
        }
        answered = {_client_of(m) for m in ok}
        self.dropped = sorted(k for k in self.sampled if k not in answered)
        for k in self.dropped:
            log.warning(
                "round %d: client %d dropped (%s)",
                server_round,
                k,
                self.errors.get(k)
                or ("not connected" if k not in self.targets else "no reply before flower.round_timeout_s"),
            )
        if len(ok) < self.cfg.flower.min_replies:
            raise FedpitError(
                f"round {server_round}: {len(ok)} client(s) replied, fewer than flower.min_replies = "
                f"{self.cfg.flower.min_replies}; dropped {self.dropped}"
            )
        return ok

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        ordered = sorted((m for m in replies if _well_formed(m)), key=_client_of)  # the in-process order
        uploads = [
            ClientReply(from_record(m.content.array_records.get(ARRAYS)), int(m.content[METRICS]["num-examples"]))
            for m in ordered
        ]
        if not uploads:
            return None, None
        new = self.method.aggregate(self.cfg, self.current, uploads)
        return to_record(new), MetricRecord({"clients": len(uploads)})

    def configure_evaluate(self, server_round, arrays, config, grid):
        return []  # evaluation is server-side (evaluate_fn): the held-out set stays on the server

    def aggregate_evaluate(self, server_round, replies):
        return None

    def summary(self) -> None:
        log.info("fedpit strategy: %s", self.method.name)


def _dp_wrap(cfg: Config, strategy: FedpitStrategy, method: Method) -> Strategy:
    dp = cfg.dp
    if dp.server_clipping_norm <= 0:
        return strategy
    if not method.shares_adapter:
        raise ConfigError(f"dp.server_clipping_norm: {method.name} shares nothing, so there is nothing to privatise")
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    sampled = len(fed.round_plan(cfg, method, 1)[0])
    return DifferentialPrivacyServerSideFixedClipping(
        strategy,
        noise_multiplier=dp.server_noise_multiplier,
        clipping_norm=dp.server_clipping_norm,
        num_sampled_clients=sampled,
    )


class FlowerServer:
    """Runs (or resumes) one fedpit job over a Flower Grid: the same run folder as ``fedpit run``, with the clients
    on SuperNodes."""

    def __init__(self, cfg: Config, grid: Grid, *, resume: bool = False):
        self.method: Method = get_method(cfg.algorithm)
        if self.method.pools_data:
            raise ConfigError(
                f"algorithm: {cfg.algorithm} pools every client's data in one place; it is a reference "
                "for `fedpit run`, not something to deploy"
            )
        if resume and not cfg.run_name:
            raise ConfigError("resume: needs run_name (the run folder to continue)")
        self.generated_name = not cfg.run_name  # a generated name that is taken gets a suffix
        self.cfg, self.grid, self.resume = fed.named(cfg, TRANSPORT), grid, resume

    def run(self) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        strategy = FedpitStrategy(cfg, self.method)
        if not self.resume:  # ask the sites now: they load their backbones while the server loads its own
            strategy.discover(self.grid)
        prep = fed.prepare(cfg)  # the partition (written to partition.json, read by the nodes) and the held-out set
        engine = fed.make_engine(cfg)
        resume = Path(cfg.output_dir) / cfg.run_name if self.resume else None
        rd, start, global_state = fed.open_run(cfg, engine, prep, resume, TRANSPORT, unique=self.generated_name)
        self.cfg = cfg = replace(cfg, run_name=rd.path.name)  # the nodes find the run folder by this name
        test_enc = fed.encoded_test(cfg, engine, prep)

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            loss, extraction = fed.evaluate_round(
                cfg, self.method, engine, rd, prep, server_round, from_record(arrays), test_enc
            )
            return metric_record({"test_loss": loss, "extraction": extraction or {}})

        strategy.evaluate_fn = evaluate_fn
        wrapped = _dp_wrap(cfg, strategy, self.method)
        try:
            strategy.wait_for_nodes(self.grid)
            for r in range(start, cfg.federation.rounds + 1):
                global_state = self.round(r, rd, strategy, wrapped, global_state)
        except BaseException as e:
            rd.set_progress(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        return fed.finish_run(
            cfg, self.method, engine, rd, prep, global_state, test_enc, transport=TRANSPORT, t_start=t_start
        )

    def round(
        self, r: int, rd: RunDir, strategy: FedpitStrategy, wrapped: Strategy, global_state: StateDict
    ) -> StateDict:
        """One round, as Flower's ``Strategy.start`` runs it (configure, send and receive, aggregate, evaluate),
        then committed to the run folder with the dropped clients recorded."""
        cfg = self.cfg
        t0 = time.perf_counter()
        _, lr = fed.round_plan(cfg, self.method, r)
        messages = list(wrapped.configure_train(r, to_record(global_state), config_record(cfg, r), self.grid))
        sent, arrived = exchange(self.grid, messages, cfg.flower.round_timeout_s)
        ok = strategy.check_replies(r, sent)
        for m in ok:  # a non-finite loss or upload stops the round before aggregation
            fed.check_update(r, _client_of(m), from_record(m.content.array_records[ARRAYS]), dict(m.content[METRICS]))
        arrays, _ = wrapped.aggregate_train(r, ok)
        new_global = from_record(arrays) if arrays is not None and len(arrays) else global_state
        down = nbytes(global_state) if self.method.shares_adapter else 0
        rows = [_client_row(r, lr, m, down, arrived.get(id(m))) for m in sorted(ok, key=_client_of)]
        ev = dict(strategy.evaluate_fn(r, to_record(new_global)))
        extraction = {k.split(".", 1)[1]: v for k, v in ev.items() if k.startswith("extraction.")} or None
        rows.append(
            fed.round_row(
                r,
                lr,
                rows,
                chosen=strategy.sampled,
                trained=sorted(_client_of(m) for m in ok),
                bytes_down=down * len(strategy.targets),
                t0=t0,
                test_loss=ev.get("test_loss"),
                extraction=extraction,
                dropped=strategy.dropped,
                errors=strategy.errors,
            )
        )
        rd.commit_round(r, new_global, rows)
        log.info(
            "round %d: %d/%d clients, train loss %s, held-out loss %s",
            r,
            len(ok),
            len(strategy.sampled),
            _fmt(rows[-1]["train_loss"]),
            _fmt(ev.get("test_loss")),
        )
        return new_global


def exchange(grid: Grid, messages: list[Message], timeout: float, poll_s: float = 0.2) -> tuple[list, dict]:
    """``Grid.send_and_receive`` (``push_messages``, then ``pull_messages`` until every reply is in or the time is up)
    with a short poll (Flower's sleeps 3 s between pulls, which a round then waits for) and each reply's arrival
    time: (replies, {id(reply): wall-clock time it was pulled})."""
    if not messages:
        return [], {}
    pending = set(grid.push_messages(messages))
    deadline, replies, arrived = time.monotonic() + timeout, [], {}
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        now = time.time()
        for m in got:
            arrived[id(m)] = now
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if pending:
            time.sleep(poll_s)
    return replies, arrived


def _well_formed(m: Message) -> bool:
    """A reply that carries what aggregation needs: no error, an upload record, and the client's id and weight."""
    if m.has_error() or ARRAYS not in m.content.array_records or METRICS not in m.content.metric_records:
        return False
    return {"client-id", "num-examples"} <= set(m.content[METRICS])


def _client_of(m: Message) -> int:
    return int(m.content[METRICS]["client-id"])


def _client_row(r: int, lr: float, m: Message, down: int, arrived: float | None = None) -> dict:
    """A client's metrics line from its reply (the same keys as in-process, plus the bytes on the wire and, under
    ``timing``, where the message's time went: see :func:`_timing`)."""
    met = dict(m.content[METRICS])
    k, n = int(met.pop("client-id")), int(met.pop("num-examples"))
    sent, seconds = int(met.pop("bytes-sent", 0)), float(met.pop("client-seconds", 0.0))
    met.pop("bytes-received", None)
    timing = _timing({key[5:]: met.pop(key) for key in list(met) if key.startswith("time.")}, m, arrived)
    row = fed.client_row(r, k, lr, ClientReply({}, n, met), seconds=seconds, received=down, sent=sent)
    return {**row, "wire_bytes_sent": m.content.array_records[ARRAYS].count_bytes(), **timing}


def _timing(times: dict, m: Message, arrived: float | None) -> dict:
    """``timing`` of a client row, in seconds: ``delivery-s`` (the server sent the message; the site's ClientApp
    took it), ``input-s`` (the message's content downloaded to the site), ``handover-s`` (Flower hands it to the
    app, ``input-s`` included), ``first-step-s`` (arrival at the site to the first training step), ``generate-s``,
    ``train-s``, ``client-s`` (arrival to reply), ``upload-s`` (reply made to reply pulled by the server; clocks of
    two machines if the site is remote), ``warm`` (backbone already loaded), ``executor`` (a long-lived site
    executor, not a process per message)."""
    if not times:
        return {}
    sent_at = times.pop("sent-at", None)
    out = dict(times)
    if sent_at is not None and arrived is not None:
        out["upload-s"] = round(max(0.0, arrived - sent_at), 3)
    return {"timing": out}


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
