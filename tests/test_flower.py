"""fedpit on Flower: the same algorithm functions in the in-process runner, Flower simulation and a real localhost
deployment (SuperLink + 3 SuperNodes, TLS and node keys), parity of the global adapter, private-tensor guard, node
authentication, a node killed mid-round, and resume after a failed round."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedpit.adapters import load_state
from fedpit.config import to_toml
from fedpit.errors import ConfigError, FedpitError
from fedpit.runner import Runner

FLOWER_OVERRIDES = [
    "selfgen.num_instructions=2",
    "selfgen.max_instruction_tokens=8",
    "selfgen.max_response_tokens=8",
    "flower.wait_for_nodes_s=60",
    "flower.round_timeout_s=120",
]


def _cfg(tiny_cfg, algorithm: str, name: str, **federation):
    from fedpit.config import set_value

    cfg = replace(
        tiny_cfg,
        algorithm=algorithm,
        run_name=name,
        federation=replace(tiny_cfg.federation, **federation) if federation else tiny_cfg.federation,
    )
    for item in FLOWER_OVERRIDES:
        k, v = item.split("=")
        set_value(cfg, k, v)
    return cfg.validate()


def _final(summary_or_dir) -> dict:
    d = summary_or_dir["final_adapter"] if isinstance(summary_or_dir, dict) else Path(summary_or_dir) / "final"
    return load_state(Path(d) / "adapter_model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ------------------------------------------------------------------------------------------------ unit
def test_run_config_set_string_and_declared_keys(tmp_path):
    from fedpit.flower.common import config_from_run_config

    f = tmp_path / "c.toml"
    f.write_text('algorithm = "fedit"\n[federation]\nrounds = 7\n')
    cfg, resume = config_from_run_config({"config": str(f), "set": "train.lr=0.01; run_name=x", "resume": True})
    assert (cfg.algorithm, cfg.federation.rounds, cfg.train.lr, cfg.run_name, resume) == ("fedit", 7, 0.01, "x", True)
    cfg, _ = config_from_run_config({"config": "", "set": ""}, base={"federation.rounds": 2})
    assert cfg.federation.rounds == 2 and cfg.algorithm == "fedpit"
    with pytest.raises(ConfigError, match="not key=value"):
        config_from_run_config({"set": "federation.rounds"})
    with pytest.raises(ConfigError, match="federation.rounds"):
        config_from_run_config({"set": "federation.rounds=0"})


def test_config_travels_in_messages_unchanged(tiny_cfg):
    from fedpit.flower.common import config_of, config_record

    cfg, r = config_of(config_record(tiny_cfg, 3))
    assert r == 3 and to_toml(cfg) == to_toml(tiny_cfg)


@pytest.fixture
def task_identity():
    """The run, node and task a Flower runtime sets before messages are made: the strategy tests make reply messages
    outside a runtime (Flower has no public way to, so this one fixture touches its internal identity)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what a runtime sets for messages
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_private_guard_blocks_a_private_tensor_and_passes_the_upload():
    """The client mod on the reply's content (real Flower records; the reply itself stands in for a Message, which
    only a running Flower runtime can make)."""
    from types import SimpleNamespace

    from flwr.app import ArrayRecord, RecordDict

    from fedpit.flower import client_app
    from fedpit.flower.common import from_record, to_record

    private = {"a.lora_A.weight": torch.randn(4, 8), "a.lora_B.weight": torch.zeros(8, 4)}
    upload = {"a.lora_A.weight": torch.randn(4, 8), "a.lora_B.weight": torch.zeros(8, 4)}
    client_app._register_private(private)

    def replying(content: RecordDict):
        reply = SimpleNamespace(content=content, has_content=lambda: True)
        return lambda msg, ctx: reply

    def arrays(state):
        return RecordDict({"arrays": ArrayRecord(torch_state_dict=state)})

    passing = replying(arrays(upload))
    assert client_app.private_guard(None, None, passing) is passing(None, None)  # zeros leak nothing
    with pytest.raises(RuntimeError, match="a.lora_A.weight"):
        client_app.private_guard(
            None, None, replying(arrays({**upload, "a.lora_A.weight": private["a.lora_A.weight"]}))
        )
    with pytest.raises(RuntimeError, match="private key"):
        client_app.private_guard(None, None, replying(arrays({"local.a": torch.randn(2, 2)})))
    packed = to_record({**upload, "a.lora_A.weight": private["a.lora_A.weight"].clone()})  # one flat array on the wire
    assert len(packed) == 1 and torch.equal(from_record(packed)["a.lora_A.weight"], private["a.lora_A.weight"])
    with pytest.raises(RuntimeError, match="a.lora_A.weight"):
        client_app.private_guard(None, None, replying(RecordDict({"arrays": packed})))
    empty = SimpleNamespace(has_content=lambda: False)  # an error reply has no content to check
    assert client_app.private_guard(None, None, lambda msg, ctx: empty) is empty


def test_site_command_and_engine_key(tiny_cfg, tmp_path):
    """`fedpit flower node` keeps Flower's subprocess isolation and needs the SuperLink's address; a site's engine
    key changes with the backbone's folder content (weights replaced in place), not only with its name."""
    import shutil

    from fedpit.flower.client_work import engine_key
    from fedpit.flower.node import run_node

    with pytest.raises(ConfigError, match="isolation"):
        run_node(["--isolation", "process"])
    with pytest.raises(ConfigError, match="superlink"):
        run_node(["--node-config", "partition-id=0"])
    copy = tmp_path / "backbone"
    shutil.copytree(tiny_cfg.model.name, copy)
    cfg = replace(tiny_cfg, model=replace(tiny_cfg.model, name=str(copy)))
    before = engine_key(cfg)
    assert engine_key(cfg) == before and engine_key(replace(cfg, seed=cfg.seed + 1)) != before
    weights = next(copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # same bytes, a new file: what replacing the weights looks like
    assert engine_key(cfg) != before


def test_records_cross_the_pipe_byte_for_byte_and_the_guard_knows_private_keys():
    from flwr.app import ArrayRecord

    from fedpit.algorithms.base import LOCAL_PREFIX
    from fedpit.flower import common
    from fedpit.flower.common import record_from_parts, record_parts, to_record

    assert common.LOCAL_PREFIX == LOCAL_PREFIX  # the ClientApp's copy (it imports no torch)
    for record in (
        to_record({"a": torch.randn(3, 4), "b": torch.randn(5)}),  # packed float32
        ArrayRecord(torch_state_dict={"h": torch.randn(2, 2).half(), "i": torch.arange(3)}),
    ):
        again = record_from_parts(record_parts(record))
        assert list(again) == list(record) and all(again[k].object_id == record[k].object_id for k in record)
    assert record_parts(None) is None and record_from_parts(None) is None


def test_the_client_app_process_imports_no_torch():
    """Flower starts a process per message: the ClientApp module it imports stays light (the work runs in the
    site's executor, or imports torch only when it runs in this process)."""
    import subprocess
    import sys

    code = "import sys, fedpit.flower.client_app; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_executor_answers_requests_and_raises_their_errors(tiny_cfg, tmp_path):
    """The site's executor over its socket: an answer as the ClientApp's own process would give it, the error a
    request raised (same type), a caller without the site's key refused, and private file modes."""
    import threading
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    from fedpit.flower import client_work, executor
    from fedpit.flower.common import config_record

    site = tmp_path / "site"
    server = threading.Thread(target=executor.serve, kwargs={"site": site, "max_tasks": 2}, daemon=True)
    server.start()
    req = {"kind": "query", "config": dict(config_record(tiny_cfg, 0)), "node_config": {"partition-id": 1}}
    assert executor.call(site, req, wait_s=120) == client_work.query(req)
    assert (Path(executor.socket_path(site)).stat().st_mode & 0o777) == 0o600
    with pytest.raises(AuthenticationError):
        Client(executor.socket_path(site), family="AF_UNIX", authkey=b"not the key").close()
    with pytest.raises(ConfigError, match="partition-id"):
        executor.call(site, {**req, "node_config": {}})
    server.join(30)
    assert not server.is_alive()
    assert (site.stat().st_mode & 0o777, (site / executor.KEY_FILE).stat().st_mode & 0o777) == (0o700, 0o600)


def test_strategy_aggregates_like_the_method_in_client_order(tiny_cfg, task_identity):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from fedpit.algorithms import ClientReply, get_method
    from fedpit.flower.common import to_record
    from fedpit.flower.server_app import FedpitStrategy

    states = [{"w": torch.randn(3, 3, dtype=torch.float32)} for _ in range(3)]
    counts = [5, 9, 2]
    asked = Message(RecordDict({}), dst_node_id=0, message_type="train")
    replies = [
        Message(
            RecordDict({"arrays": to_record(s), "metrics": MetricRecord({"client-id": k, "num-examples": n})}),
            reply_to=asked,
        )
        for k, (s, n) in enumerate(zip(states, counts))
    ]
    method = get_method("fedit")
    strategy = FedpitStrategy(tiny_cfg, method)
    strategy.current = {"w": torch.zeros(3, 3)}
    broken = Message(RecordDict({"metrics": MetricRecord({"client-id": 3})}), reply_to=asked)  # no upload, no weight
    arrays, _ = strategy.aggregate_train(1, list(reversed(replies)) + [broken])
    want = method.server_aggregate({}, [ClientReply(s, n) for s, n in zip(states, counts)])
    assert torch.equal(dict(arrays.to_torch_state_dict())["w"], want["w"])
    assert isinstance(arrays, ArrayRecord)
    strategy.sampled, strategy.targets = [0, 1, 2, 3], {0: 0, 1: 0, 2: 0, 3: 0}
    assert strategy.check_replies(1, replies + [broken]) == replies and strategy.dropped == [3]
    with pytest.raises(FedpitError, match="min_replies"):
        strategy.check_replies(1, [broken])


class FakeGrid:
    """The part of a Grid the strategy uses when every node is already known."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def test_strategy_samples_like_the_in_process_runner(tiny_cfg, task_identity):
    from fedpit.algorithms import get_method
    from fedpit.federation import round_plan
    from fedpit.flower.common import config_record, to_record
    from fedpit.flower.server_app import FedpitStrategy

    cfg = replace(tiny_cfg, federation=replace(tiny_cfg.federation, fraction=0.67))
    method = get_method("fedit")
    strategy = FedpitStrategy(cfg, method)
    strategy.nodes = {0: 10, 1: 11, 2: 12}
    for r in (1, 2, 3):
        sent = list(
            strategy.configure_train(r, to_record({"w": torch.zeros(2)}), config_record(cfg, r), FakeGrid([10, 11, 12]))
        )
        want = round_plan(cfg, method, r)[0]
        assert [m.metadata.dst_node_id for m in sent] == [10 + k for k in want] and len(want) == 2
    with pytest.raises(FedpitError, match="are connected"):
        strategy.configure_train(1, to_record({"w": torch.zeros(2)}), config_record(cfg, 1), FakeGrid([]))


def test_cenit_is_refused_on_flower(tiny_cfg):
    from fedpit.flower.server_app import FlowerServer

    with pytest.raises(ConfigError, match="cenit"):
        FlowerServer(replace(tiny_cfg, algorithm="cenit"), grid=None)


def test_certificates_name_the_hosts_and_keys_are_openssh(tmp_path):
    from cryptography import x509

    from fedpit.flower.deploy import make_certificates, make_node_key

    files = make_certificates(tmp_path / "certs", ["hospital-a.example", "10.0.0.5"])
    cert = x509.load_pem_x509_certificate(files["cert"].read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "hospital-a.example" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.0.0.5"}
    assert (files["key"].stat().st_mode & 0o777) == 0o600
    priv, pub = make_node_key(tmp_path / "keys", "site1")
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ") and b"OPENSSH PRIVATE KEY" in priv.read_bytes()


# ------------------------------------------------------------------------------------------------ simulation
def _files(run_dir) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in Path(run_dir).rglob("*") if p.is_file()}


@pytest.mark.parametrize("algorithm", ["fedit", "fedpit", "locit"])
def test_simulation_matches_the_in_process_runner(tiny_cfg, algorithm):
    """The same config in-process and on Flower's simulation: the same global adapter, the same private adapters,
    the same files in the run folder and the same summary keys (one run folder life for both runtimes)."""
    from fedpit.flower.simulation import simulate

    ref = Runner(_cfg(tiny_cfg, algorithm, f"{algorithm}-inproc"), show_progress=False).run()
    sim = simulate(_cfg(tiny_cfg, algorithm, f"{algorithm}-sim"))
    assert _max_diff(_final(ref), _final(sim)) <= 1e-5
    assert _files(ref["run_dir"]) == _files(sim["run_dir"]) and "partition.json" in _files(sim["run_dir"])
    assert set(ref) == set(sim) and (ref["transport"], sim["transport"]) == ("in-process", "flower")
    assert len(sim["test_loss_per_round"]) == 3 and None not in sim["test_loss_per_round"]  # local-only too
    assert sim["personal_test_loss"] == pytest.approx(ref["personal_test_loss"], abs=1e-5)
    for mine, theirs in zip(ref["personal_adapters"], sim["personal_adapters"]):
        assert _max_diff(_final(Path(mine).parent), _final(Path(theirs).parent)) <= 1e-5
    if algorithm == "fedit":  # a complete run is not resumed, on Flower as in-process
        from fedpit.flower.server_app import FlowerServer

        with pytest.raises(ConfigError, match="already complete"):
            FlowerServer(_cfg(tiny_cfg, algorithm, f"{algorithm}-sim"), grid=None, resume=True).run()
    rows = [json.loads(x) for x in (Path(sim["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in rows if r["kind"] == "client"]
    shares = algorithm != "locit"
    assert len(clients) == 6 and all((r["bytes_sent"] > 0 and r["bytes_received"] > 0) == shares for r in clients)
    if algorithm != "fedit":  # private state stayed with the (virtual) nodes, on their disk
        assert len(sim["personal_adapters"]) == 3
        assert algorithm == "locit" or list(
            (Path(sim["run_dir"]) / "clients" / "client_0").glob("round_001/synthetic.jsonl")
        )


# ------------------------------------------------------------------------------------------------ deployment
def test_a_port_taken_before_flower_binds_it_is_replaced_and_nothing_is_left(tmp_path, monkeypatch):
    """A free port can be taken by another process between the moment it is found free and the moment Flower binds
    it (the SuperLink or SuperNode then exits, "address already in use"): the launcher starts that process again on
    another port. Stopping the cluster leaves none of the processes it started."""
    import socket

    from fedpit.flower import deploy

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))  # bound, not listening: Flower cannot bind it, and a client is refused at once
    taken, calls, real = busy.getsockname()[1], [], deploy.free_port

    def racy_free_port(exclude=frozenset()):  # the SuperLink's first port and the node's first port are taken
        calls.append(1)
        return taken if len(calls) in (1, 3) else real(exclude | {taken})

    monkeypatch.setattr(deploy, "free_port", racy_free_port)
    c = deploy.LocalCluster(tmp_path / "c", nodes=1, tls=False, auth=False, executor=False)
    try:
        with c:
            assert c.port != taken and c.node_ports[0] != taken and c.online() == 1
            assert (c.logs / "superlink.log").read_text().count(deploy.PORT_TAKEN) == 1
            assert (c.logs / "supernode0.log").read_text().count(deploy.PORT_TAKEN) == 1
    finally:
        busy.close()
    assert not deploy._group_members(c._groups, c._started_at)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from fedpit.flower.deploy import LocalCluster

    with LocalCluster(tmp_path_factory.mktemp("flower"), nodes=3, tls=True, auth=True) as c:
        yield c


def _deploy(cluster, cfg, *, resume: bool = False) -> tuple[dict, Path]:
    from fedpit.flower.deploy import repo_app_dir

    f = cluster.workdir / f"{cfg.run_name}.toml"
    f.write_text(to_toml(cfg), encoding="utf-8")
    st = cluster.wait_run(cluster.submit(repo_app_dir(), {"config": str(f), "resume": resume}), timeout=600)
    return st, Path(cfg.output_dir) / cfg.run_name


def _client_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "client"]


def _round_rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["round"]: r for r in rows if r["kind"] == "round" and r["round"] > 0}


@pytest.mark.parametrize("algorithm", ["fedit", "fedpit"])
def test_deployment_with_tls_matches_the_in_process_runner(cluster, tiny_cfg, algorithm):
    ref = Runner(_cfg(tiny_cfg, algorithm, f"{algorithm}-ref"), show_progress=False).run()
    st, run_dir = _deploy(cluster, _cfg(tiny_cfg, algorithm, f"{algorithm}-deployed"))
    assert st["status"] == "finished:completed", st
    assert _max_diff(_final(ref), _final(run_dir)) <= 1e-5
    assert all(r["trained"] == [0, 1, 2] and r["bytes_up"] > 0 for r in _round_rows(run_dir).values())
    timing = {(r["round"], r["client"]): r["timing"] for r in _client_rows(run_dir)}  # where each message's time went
    assert sorted(timing) == [(r, k) for r in (1, 2) for k in range(3)]
    for (r, _), t in timing.items():
        assert t["executor"] == 1 and t["warm"] == (r > 1 or t["warm"])  # round 2: the backbone was loaded already
        assert 0 <= t["first-step-s"] <= t["client-s"] and t["train-s"] > 0 and t["upload-s"] >= 0
    assert all(timing[(2, k)]["warm"] == 1 for k in range(3))


def _other_backbone(src: str, dst: Path, seed: int) -> str:
    """The tiny model with other random weights, saved (again) in ``dst``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return str(dst)


def test_a_site_reloads_when_the_backbone_changes(cluster, tiny_cfg, tmp_path):
    """The sites' executors keep their backbone across runs; a run on another backbone (a new folder, then the same
    folder with its weights replaced in place) trains on that backbone: the in-process result, not a stale model."""
    other = tmp_path / "other-backbone"
    for seed in (1, 2):
        path = _other_backbone(tiny_cfg.model.name, other, seed)
        cfg = _cfg(replace(tiny_cfg, model=replace(tiny_cfg.model, name=path)), "fedit", f"other{seed}", rounds=1)
        ref = Runner(replace(cfg, run_name=f"other{seed}-ref"), show_progress=False).run()
        st, run_dir = _deploy(cluster, cfg)
        assert st["status"] == "finished:completed", st
        assert _max_diff(_final(ref), _final(run_dir)) <= 1e-5


def test_executor_crash_mid_message_is_a_drop_and_recovers(cluster, tiny_cfg):
    """A site's executor killed while it trains: its supervisor starts a new one, which answers the message the
    dead one held with an error at once (the client is recorded as dropped for that round; no timeout waited out),
    loads the backbone again and trains in the next round."""
    cfg = _cfg(tiny_cfg, "fedit", "crashed", rounds=2)
    cfg.train.local_steps = 40  # a message long enough to be killed in
    cfg.flower.min_replies, cfg.flower.round_timeout_s = 2, 300.0
    from fedpit.flower.deploy import repo_app_dir

    f = cluster.workdir / "crashed.toml"
    f.write_text(to_toml(cfg), encoding="utf-8")
    held = cluster.workdir / "sites" / "node2" / "task.json"  # the message an executor is working on
    run_id = cluster.submit(repo_app_dir(), {"config": str(f)})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if held.is_file() and '"message_type": "train"' in held.read_text():
            break
        time.sleep(0.05)
    cluster.kill_executor(2)
    st = cluster.wait_run(run_id, timeout=600)
    assert st["status"] == "finished:completed", st
    rounds = _round_rows(Path(cfg.output_dir) / cfg.run_name)
    assert rounds[1]["dropped"] == [2] and "stopped during this message" in rounds[1]["errors"]["2"]
    assert rounds[1]["seconds"] < cfg.flower.round_timeout_s and rounds[2]["trained"] == [0, 1, 2]


def test_unregistered_supernode_is_refused(cluster):
    p = cluster.start_node(3, key_name="unregistered")  # a valid key pair the SuperLink has never seen
    rc = p.wait(timeout=120)
    log = (cluster.logs / "supernode3-unregistered.log").read_text(errors="replace")
    assert rc != 0 and "2004" in log
    assert cluster.online() == 3


def test_node_killed_mid_round_is_dropped_and_rejoins(cluster, tiny_cfg):
    cfg = _cfg(tiny_cfg, "fedit", "killed", rounds=5)
    cfg.train.local_steps = 40  # rounds long enough for the site to come back before the run ends
    cfg.flower.round_timeout_s = 100.0
    cfg.flower.min_replies = 2
    from fedpit.flower.deploy import repo_app_dir

    f = cluster.workdir / "killed.toml"
    f.write_text(to_toml(cfg), encoding="utf-8")
    run_dir = Path(cfg.output_dir) / cfg.run_name
    run_id = cluster.submit(repo_app_dir(), {"config": str(f)})
    deadline = time.monotonic() + 300
    while not (run_dir / "rounds" / "round_000").is_dir() and time.monotonic() < deadline:
        time.sleep(0.2)
    cluster.kill_node(2)  # round 1's messages are out: client 2 dies with its work
    while cluster.online() == 3 and time.monotonic() < deadline:  # its key is free once the SuperLink sees it gone
        time.sleep(1.0)
    cluster.start_node(2)  # the site comes back (a new node, same key) once the SuperLink let the old session go
    st = cluster.wait_run(run_id, timeout=600)
    assert st["status"] == "finished:completed", st
    rounds = _round_rows(run_dir)
    assert rounds[1]["dropped"] == [2] and rounds[1]["trained"] == [0, 1]
    assert any(2 in rounds[r]["trained"] for r in (2, 3, 4, 5)), rounds  # back in round 4 on a busy machine
    cluster.wait_online(3)


def test_failed_round_resumes_to_the_uninterrupted_result(cluster, tiny_cfg):
    """Two of three clients per round; client 2 is down, so the first round that samples it fails the run
    (flower.min_replies = 2). After the node returns, resume = true finishes the run, and the final adapter is the
    in-process runner's."""
    from fedpit.runner import sample_clients

    seed = next(
        s for s in range(1, 200) if 2 not in sample_clients(s, 1, 3, 0.67, 1) and 2 in sample_clients(s, 2, 3, 0.67, 1)
    )
    cfg = _cfg(replace(tiny_cfg, seed=seed), "fedit", "resumed", fraction=0.67)
    cfg.flower.min_replies, cfg.flower.round_timeout_s, cfg.flower.wait_for_nodes_s = 2, 30.0, 5.0
    ref = Runner(replace(cfg, run_name="resumed-ref"), show_progress=False).run()
    cluster.kill_node(2)
    st, run_dir = _deploy(cluster, cfg)
    assert st["status"] == "finished:failed"
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["completed_rounds"] == 1 and "min_replies" in progress["error"]
    assert "are connected" in progress["error"]  # failed at once: the round could not reach quorum
    cluster.start_node(2)
    cluster.wait_online(3)
    st, run_dir = _deploy(cluster, cfg, resume=True)
    assert st["status"] == "finished:completed", st
    assert _max_diff(_final(ref), _final(run_dir)) <= 1e-5


def test_dp_wrapper_clips_each_update_around_the_global_adapter(tiny_cfg, task_identity):
    from flwr.app import Message, MetricRecord, RecordDict

    from fedpit.algorithms import get_method
    from fedpit.flower.common import config_record, from_record, to_record
    from fedpit.flower.server_app import FedpitStrategy, _dp_wrap

    cfg = replace(tiny_cfg, dp=replace(tiny_cfg.dp, server_clipping_norm=0.5, server_noise_multiplier=0.0))
    method = get_method("fedit")
    strategy = FedpitStrategy(cfg, method)
    wrapped = _dp_wrap(cfg, strategy, method)
    assert wrapped is not strategy
    current = {"w": torch.zeros(4, 4)}
    strategy.nodes = {0: 10, 1: 11, 2: 12}
    sent = list(wrapped.configure_train(1, to_record(current), config_record(cfg, 1), FakeGrid([10, 11, 12])))
    assert len(sent) == 3
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": to_record({"w": torch.full((4, 4), 3.0)}),
                    "metrics": MetricRecord({"client-id": k, "num-examples": 10}),
                }
            ),
            reply_to=m,
        )
        for k, m in enumerate(sent)
    ]
    arrays, _ = wrapped.aggregate_train(1, replies)
    assert abs(from_record(arrays)["w"].norm().item() - 0.5) < 1e-4  # each update clipped to norm 0.5
    with pytest.raises(ConfigError, match="shares nothing"):
        _dp_wrap(replace(cfg, algorithm="locit"), FedpitStrategy(cfg, get_method("locit")), get_method("locit"))


def test_a_site_trains_on_its_own_data_file(tiny_cfg, tmp_path):
    from fedpit.flower.client_work import client_id, local_examples

    f = tmp_path / "site.jsonl"
    f.write_text(
        "".join(
            json.dumps({"instruction": f"Question {i} about dosing?", "input": "", "output": f"Answer {i}."}) + "\n"
            for i in range(5)
        )
    )
    own = local_examples(tiny_cfg, {"data-file": str(f)}, 0)
    assert [e.instruction for e in own] == [f"Question {i} about dosing?" for i in range(5)]
    share = local_examples(tiny_cfg, {}, 1)  # no data-file: this client's share of the run's partition
    assert share and all(e.instruction.startswith("Question") is False for e in share)
    with pytest.raises(ConfigError, match="partition-id"):
        client_id({})
    with pytest.raises(ConfigError, match="outside"):
        local_examples(tiny_cfg, {}, 9)
    from fedpit.errors import DataError

    (tmp_path / "bad.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        local_examples(tiny_cfg, {"data-file": str(tmp_path / "bad.jsonl")}, 0)


def test_cli_makes_certificates_and_node_keys(tmp_path, capsys):
    from fedpit.cli import main

    assert main(["flower", "certs", "--out", str(tmp_path / "c"), "--host", "fl.example.org"]) == 0
    assert main(["flower", "keys", "--out", str(tmp_path / "k"), "site-a", "site-b"]) == 0
    assert {p.name for p in (tmp_path / "k").iterdir()} == {"site-a", "site-a.pub", "site-b", "site-b.pub"}
    assert (tmp_path / "c" / "ca.crt").is_file() and "register" in capsys.readouterr().out
