"""The Flower ServerApp: fedpit's round loop over a Flower Grid.

Per round it asks :func:`fedpit.runner.round_plan` which clients train (the same draw as ``fedpit run``), sends each
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

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from .. import __version__
from ..adapters import StateDict, nbytes
from ..algorithms import ClientReply, get_method
from ..config import Config, to_toml
from ..errors import ConfigError, FedpitError
from ..rundir import RunDir, write_json
from ..runner import default_run_name, load_split, make_engine, new_run_dir, peak_rss_mb, round_plan, save_adapter_folder
from .common import ARRAYS, CONFIG, METRICS, config_from_run_config, config_record, from_record, to_record

log = logging.getLogger("fedpit.flower.server")


class FedpitStrategy(Strategy):
    """A fedpit method as a Flower strategy: ``configure_train`` addresses the round's clients,
    ``aggregate_train`` calls the method's ``server_aggregate``. Being a Strategy lets Flower's DP wrappers wrap it."""

    def __init__(self, method):
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
        log.info("fedpit strategy: %s", self.method.NAME)


def _dp_wrap(cfg: Config, strategy: FedpitStrategy, method) -> Strategy:
    fl = cfg.flower
    if fl.dp_clipping_norm <= 0:
        return strategy
    if not method.FEDERATED:
        raise ConfigError(f"flower.dp_clipping_norm: {method.NAME} shares nothing, so there is nothing to privatise")
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    sampled = len(round_plan(cfg, method, 1)[0])
    return DifferentialPrivacyServerSideFixedClipping(strategy, noise_multiplier=fl.dp_noise_multiplier,
                                                      clipping_norm=fl.dp_clipping_norm, num_sampled_clients=sampled)


class FlowerServer:
    """Runs (or resumes) one fedpit job over a Flower Grid."""

    def __init__(self, cfg: Config, grid: Grid, *, resume: bool = False):
        self.cfg, self.grid, self.resume = cfg, grid, resume
        self.method = get_method(cfg.algorithm)
        if self.method.CENTRALIZED:
            raise ConfigError(f"algorithm: {cfg.algorithm} pools every client's data in one place; it is a reference "
                              "for `fedpit run`, not something to deploy")
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
        test = load_split(cfg, "test")[: cfg.eval.max_examples] if cfg.eval.test_loss else []
        engine = make_engine(cfg)
        if self.resume:
            if not cfg.run_name:
                raise ConfigError("resume: needs run_name (the run folder to continue)")
            rd = RunDir(f"{cfg.output_dir}/{cfg.run_name}")
            if not rd.config_file.is_file():
                raise ConfigError(f"resume: {rd.path} is not a fedpit run folder (no config.toml)")
            start = rd.progress()["completed_rounds"] + 1
            rd.truncate_metrics(start - 1)
            global_state = rd.load_global(start - 1)
        else:
            if not cfg.run_name:
                from dataclasses import replace

                cfg = self.cfg = replace(cfg, run_name=default_run_name(cfg, "flower"))
            rd = new_run_dir(cfg)
            rd.config_file.write_text(to_toml(cfg), encoding="utf-8")
            global_state = engine.initial_adapter
            save_adapter_folder(cfg, rd, rd.round_dir(0), global_state, engine)
            start = 1
            rd.set_progress(completed_rounds=0, status="running", transport="flower")
        test_enc = engine.encode(test) if test else []
        if start == 1 and test_enc:
            engine.load_adapter(global_state)
            rd.append_metrics([{"kind": "round", "round": 0, "test_loss": engine.mean_loss(test_enc)}])
        strategy = FedpitStrategy(self.method)
        wrapped = _dp_wrap(cfg, strategy, self.method)
        try:
            self.wait_for_nodes()
            for r in range(start, cfg.federation.rounds + 1):
                global_state = self._round(r, rd, engine, strategy, wrapped, global_state, test_enc)
        except BaseException as e:
            rd.set_progress(status="failed", error=f"{type(e).__name__}: {e}")
            raise
        save_adapter_folder(cfg, rd, rd.path / "final", global_state, engine)
        rounds = [m for m in rd.read_metrics() if m.get("kind") == "round"]
        personal = sorted(str(p) for p in (rd.path / "clients").glob("client_*/final") if p.is_dir())
        summary = {
            "run_dir": str(rd.path), "algorithm": cfg.algorithm, "transport": "flower", "rounds": cfg.federation.rounds,
            "num_clients": cfg.partition.num_clients, "final_adapter": str(rd.path / "final"),
            "shares_global_adapter": self.method.FEDERATED,
            "personal_adapters": personal,  # only those on this machine's disk; a real site keeps its own
            "train_loss_per_round": [m.get("train_loss") for m in rounds if m["round"] > 0],
            "test_loss_per_round": [m.get("test_loss") for m in rounds],
            "dropped_per_round": {m["round"]: m["dropped"] for m in rounds if m["round"] > 0 and m.get("dropped")},
            "seconds_this_process": round(time.perf_counter() - t_start, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
            "bytes_up_total": sum(m["bytes_up"] for m in rounds if m["round"] > 0),
            "bytes_down_total": sum(m["bytes_down"] for m in rounds if m["round"] > 0),
            "fedpit_version": __version__,
        }
        write_json(rd.path / "summary.json", summary)
        rd.set_progress(status="complete", completed_rounds=cfg.federation.rounds)
        return summary

    def _round(self, r: int, rd: RunDir, engine, strategy: FedpitStrategy, wrapped: Strategy,
               global_state: StateDict, test_enc: list) -> StateDict:
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
        replies = self._send(messages, cfg.flower.round_timeout_s)
        by_node = {n: k for k, n in strategy.targets.items()}
        ok = [m for m in replies if not m.has_error()]
        errors = {by_node.get(m.metadata.src_node_id, -1): m.error.reason for m in replies if m.has_error()}
        answered = {int(m.content[METRICS]["client-id"]) for m in ok}
        dropped = sorted(k for k in chosen if k not in answered)
        for k in dropped:
            log.warning("round %d: client %d dropped (%s)", r, k, errors.get(k) or
                        ("not connected" if k not in strategy.targets else "no reply before flower.round_timeout_s"))
        if len(ok) < cfg.flower.min_replies:
            raise FedpitError(f"round {r}: {len(ok)} client(s) replied, fewer than flower.min_replies = "
                              f"{cfg.flower.min_replies}; dropped {dropped}")
        arrays, _ = wrapped.aggregate_train(r, ok)
        new_global = from_record(arrays) if arrays is not None and len(arrays) else global_state
        down = nbytes(global_state) if self.method.FEDERATED else 0
        rows = []
        for m in sorted(ok, key=lambda m: int(m.content[METRICS]["client-id"])):
            met = dict(m.content[METRICS])
            head = {"kind": "client", "round": r, "client": int(met.pop("client-id")), "lr": lr,
                    "examples": int(met.pop("num-examples"))}
            sent = int(met.pop("bytes-sent", 0))
            met.pop("bytes-received", None)
            rows.append({**head, **met, "bytes_received": down, "bytes_sent": sent,
                         "wire_bytes_sent": m.content.array_records[ARRAYS].count_bytes()})
        test_loss = None
        if test_enc and self.method.FEDERATED:
            engine.load_adapter(new_global)
            test_loss = engine.mean_loss(test_enc)
        tokens = sum(row.get("target_tokens", 0) for row in rows)
        train_loss = sum(row.get("loss", 0.0) * row.get("target_tokens", 0) for row in rows) / tokens if tokens else None
        rows.append({"kind": "round", "round": r, "clients": chosen, "trained": sorted(answered), "dropped": dropped,
                     "errors": {str(k): v for k, v in errors.items()}, "lr": lr, "train_loss": train_loss,
                     "test_loss": test_loss, "seconds": round(time.perf_counter() - t0, 3),
                     "bytes_up": sum(row["bytes_sent"] for row in rows), "bytes_down": down * len(strategy.targets),
                     "synthetic": sum(row.get("synthetic", 0) for row in rows), "peak_rss_mb": round(peak_rss_mb(), 1)})
        save_adapter_folder(cfg, rd, rd.round_dir(r), new_global, engine)
        rd.append_metrics(rows)
        rd.set_progress(completed_rounds=r, status="running")
        log.info("round %d: %d/%d clients, train loss %s, held-out loss %s", r, len(ok), len(chosen),
                 f"{train_loss:.3f}" if train_loss is not None else "-", f"{test_loss:.3f}" if test_loss else "-")
        return new_global


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
