"""What every runtime shares: the data and its partition, the round plan, the engine, the round record, the summary.

The in-process runner (:mod:`fedpit.runner`) and Flower (:mod:`fedpit.flower`) are two loops over these functions and
over :class:`fedpit.rundir.RunDir` (the run folder's life: start, resume, commit a round, finish), so both write the
same folder, the same metrics rows and the same summary keys by construction. Nothing here moves data between
clients and server: that is the runtime's job.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .adapter_folder import write_adapter_folder
from .adapters import StateDict, check_finite
from .algorithms.base import (
    ClientReply,
    ClientState,
    Method,
    RoundContext,
    client_seed,
    sample_clients,
)
from .audit.data import PrivateData, split_pool, training_set
from .config import Config
from .data import Example, check_enough, load_demo, load_examples, save_jsonl
from .dp import preflight as dp_preflight
from .dp import run_summary as dp_summary
from .errors import ConfigError, TrainingError
from .fsutil import write_private_text
from .manifest import read_json, write_json
from .partition import Partition, make_partition
from .rundir import RunDir

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "Prepared",
    "check_update",
    "client_context",
    "client_seed",
    "client_share",
    "default_run_name",
    "finish_run",
    "make_engine",
    "open_run",
    "prepare",
    "round_plan",
    "sample_clients",
]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_run_name(cfg: Config, transport: str = "") -> str:
    """``<time>-<algorithm>[-transport]``: a run folder's name when the config names none."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.algorithm}{'-' + transport if transport else ''}"


def named(cfg: Config, transport: str = "") -> Config:
    """``cfg`` with its run name decided (the config's own, else :func:`default_run_name`)."""
    return cfg if cfg.run_name else dataclasses.replace(cfg, run_name=default_run_name(cfg, transport))


# ---------------------------------------------------------------------------------------------------------- data
def load_split(cfg: Config, which: str) -> list[Example]:
    src = cfg.data.train if which == "train" else cfg.data.test
    if not src:
        return []
    if src == "demo":
        return load_demo(which)
    return load_examples(
        src, format=cfg.data.format, output_field=cfg.data.output_field or None, on_duplicate=cfg.data.on_duplicate
    )


def load_train(cfg: Config) -> list[Example]:
    train = load_split(cfg, "train")
    return train[: cfg.data.limit] if cfg.data.limit else train


@dataclass
class Prepared:
    """Validated inputs of a run: nothing has been written or loaded onto a device yet."""

    cfg: Config
    train: list[Example]
    test: list[Example]
    partition: Partition
    private: PrivateData | None = None  # privacy.holdout's non-members and privacy.canaries (fedpit.audit.data)

    def client_examples(self, k: int) -> list[Example]:
        return self.partition.subset(self.train, k)


def prepare(cfg: Config) -> Prepared:
    """Load and check the data, and partition it; all input validation happens here, before anything is written."""
    train, private = split_pool(cfg, load_train(cfg))  # privacy.holdout: the audit's non-members leave the pool
    p = cfg.partition
    check_enough(train, p.num_clients, p.min_per_client, cfg.data.train)
    test = load_split(cfg, "test")
    if cfg.selfgen.public_data:  # validate the ablation's public file before anything is written
        from .selfgen import public_pool

        public_pool(cfg.selfgen.public_data)
    part = make_partition(
        train,
        num_clients=p.num_clients,
        method=p.method,
        alpha=p.alpha,
        label=p.label,
        num_clusters=p.num_clusters,
        min_per_client=p.min_per_client,
        seed=cfg.seed,
    )
    prep = private.attach(Prepared(cfg, train, test, part))  # privacy.canaries join their clients' data
    dp_preflight(cfg, [len(prep.client_examples(k)) for k in range(p.num_clients)])  # fedit-dp's accountant
    return prep


def client_share(cfg: Config, k: int) -> list[Example]:
    """Client ``k``'s share of ``data.train``: from the run folder's ``partition.json`` when the server wrote one
    (no re-partitioning on the node), else by partitioning the data as the server does."""
    if not 0 <= k < cfg.partition.num_clients:
        raise ConfigError(
            f"node config: partition-id {k} is outside 0..{cfg.partition.num_clients - 1} "
            f"(partition.num_clients = {cfg.partition.num_clients})"
        )
    saved = RunDir(Path(cfg.output_dir) / cfg.run_name).partition_file if cfg.run_name else None
    if saved is not None and saved.is_file():
        return Partition.from_dict(read_json(saved)).subset(training_set(cfg, load_train(cfg)), k)
    return prepare(cfg).client_examples(k)


# ---------------------------------------------------------------------------------------------------------- rounds
def round_plan(cfg: Config, method: Method, r: int) -> tuple[list[int], float]:
    """Which clients train in round ``r`` and at which learning rate (cosine over rounds). Every transport (the
    in-process runner, Flower simulation, Flower deployment) asks this function, so they sample the same clients."""
    from .engine import cosine_lr

    lr = cosine_lr(r - 1, cfg.federation.rounds, cfg.train.lr, cfg.train.lr_min)
    return method.clients(cfg, r), lr


def client_context(cfg: Config, method: Method, r: int, k: int) -> RoundContext:
    """Everything client ``k`` needs to know about round ``r``, derived from the config alone."""
    _, lr = round_plan(cfg, method, r)
    return RoundContext(round=r, client_id=k, lr=lr, seed=client_seed(cfg.seed, r, k), cfg=method.round_config(cfg))


# ---------------------------------------------------------------------------------------------------------- engine
def make_engine(cfg: Config) -> Engine:
    """The one way to build an engine: the config's backbone, LoRA shape, template and seed."""
    from .backbone import load_backbone
    from .engine import Engine

    m = cfg.model
    bb = load_backbone(m.name, dtype=m.dtype, device=m.device, cache_dir=m.cache_dir or None)
    try:
        return Engine(bb, cfg.lora, template=m.template, max_seq_len=m.max_seq_len, seed=cfg.seed)
    except ValueError as e:  # peft: target modules not found in the model
        raise ConfigError(f"lora.target_modules: {str(e).splitlines()[0]}") from None


def adapter_meta(cfg: Config, client: int | None = None) -> dict:
    """``fedpit.json`` of every adapter folder a run writes (one key set): what to load it onto, and whose it is."""
    return {
        "model": cfg.model.name,
        "template": cfg.model.template,
        "algorithm": cfg.algorithm,
        "client": client,
        "fedpit_version": __version__,
    }


def save_adapter(
    cfg: Config,
    engine: Engine,
    folder: Path,
    state: StateDict,
    client: int | None = None,
    shared: StateDict | None = None,
) -> None:
    """An adapter folder of this run (:mod:`fedpit.adapter_folder`); with ``shared``: a stacked private adapter."""
    write_adapter_folder(folder, state, engine.peft_config_dict(), adapter_meta(cfg, client), shared=shared)


def save_personal(cfg: Config, engine: Engine, folder: Path, state: ClientState, client: int) -> None:
    """A client's personalized model as a peft folder (a stacked one with the shared adapter under it)."""
    save_adapter(cfg, engine, folder, state.local, client, shared=state.shared)


def open_run(
    cfg: Config, engine: Engine, prep: Prepared, resume: str | Path | None, transport: str, *, unique: bool = False
) -> tuple[RunDir, int, StateDict]:
    """A new run folder (round 0 committed), or the one to resume; returns (folder, first round to run, global).
    ``unique``: the run name was generated, so a taken one gets a suffix (the folder's name is ``rd.path.name``)."""
    saver = lambda folder, state: save_adapter(cfg, engine, folder, state)  # noqa: E731
    if resume is not None:
        rd, start = RunDir.resume(resume, saver, cfg)
        prep.partition = Partition.from_dict(read_json(rd.partition_file))  # verified by round 0's manifest
        return rd, start, rd.load_global(start - 1)
    path = Path(cfg.output_dir) / cfg.run_name
    rd = RunDir.start(path, cfg, prep.partition.to_dict(), saver, unique=unique, transport=transport)
    if prep.private is not None:
        prep.private.write(rd.path, cfg)  # the held-out examples and the canaries, owner-only, for `fedpit audit`
    row = {"kind": "round", "round": 0, "test_loss": None}
    test_enc = encoded_test(cfg, engine, prep)
    if test_enc:
        engine.load_adapter(engine.initial_adapter)
        row["test_loss"] = engine.mean_loss(test_enc)
    rd.commit_round(0, engine.initial_adapter, [row] if test_enc else [])
    return rd, 1, engine.initial_adapter


def encoded_test(cfg: Config, engine: Engine, prep: Prepared) -> list:
    return engine.encode(prep.test[: cfg.eval.max_examples]) if cfg.eval.test_loss else []


def write_artifacts(folder: Path, artifacts: dict) -> None:
    """A client's local outputs of one round (synthetic data as JSONL, the rest as JSON), on its own disk."""
    if not artifacts:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in artifacts.items():
        if isinstance(value, list) and all(isinstance(v, Example) for v in value):
            save_jsonl(value, folder / f"{name}.jsonl")
        else:
            write_json(folder / f"{name}.json", value)


# ---------------------------------------------------------------------------------------------------------- record
def check_update(r: int, k: int, adapter: StateDict, metrics: dict) -> None:
    """Stop the round (TrainingError: exit code 2, progress.json failed, the last committed round kept) when client
    ``k``'s uploaded adapter in round ``r``, or a training loss it reports (``loss``, ``local_loss``, ... of a phase
    that took optimizer steps), is not finite. Both runtimes call it on every reply."""
    for key, v in metrics.items():
        steps = metrics.get(key[: -len("loss")] + "steps")
        if key.endswith("loss") and isinstance(v, float) and not math.isfinite(v) and steps != 0:
            raise TrainingError(
                f"round {r}, client {k}: non-finite training loss ({key} = {v}); round {r} is not committed, the "
                f"run keeps round {r - 1}"
            )
    check_finite(adapter, f"round {r}, client {k}: the uploaded adapter (round {r} is not committed)")


def client_row(r: int, k: int, lr: float, reply: ClientReply, *, seconds: float, received: int, sent: int) -> dict:
    """One client's line in ``metrics.jsonl`` for round ``r``."""
    m = reply.metrics
    return {
        "kind": "client",
        "round": r,
        "client": k,
        "lr": lr,
        "examples": reply.num_examples,
        **{key: m[key] for key in m if key != "seconds"},
        "seconds": round(seconds, 3),
        "bytes_received": received,
        "bytes_sent": sent,
    }


def train_loss(rows: list[dict]) -> float | None:
    """The round's training loss: the clients' losses weighted by the response tokens each trained on."""
    tokens = sum(row.get("target_tokens", 0) for row in rows)
    return sum(row.get("loss", 0.0) * row.get("target_tokens", 0) for row in rows) / tokens if tokens else None


def round_row(
    r: int,
    lr: float,
    rows: list[dict],
    *,
    chosen: list[int],
    trained: list[int],
    bytes_down: int,
    t0: float,
    test_loss: float | None,
    extraction: dict | None,
    dropped: list[int] = (),
    errors: dict | None = None,
) -> dict:
    """The round's line in ``metrics.jsonl`` (after its clients' lines)."""
    return {
        "kind": "round",
        "round": r,
        "clients": chosen,
        "trained": trained,
        "dropped": list(dropped),
        "errors": {str(k): v for k, v in (errors or {}).items()},
        "lr": lr,
        "train_loss": train_loss(rows),
        "test_loss": test_loss,
        "seconds": round(time.perf_counter() - t0, 3),
        "bytes_up": sum(row["bytes_sent"] for row in rows),
        "bytes_down": bytes_down,
        "synthetic": sum(row.get("synthetic", 0) for row in rows),
        "extraction": extraction,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def personal_states(rd: RunDir, num_clients: int, r: int) -> dict[int, ClientState]:
    """Each client's private state as of round ``r``, for the clients whose state is in this run folder."""
    out = {}
    for k in range(num_clients):
        state = ClientState.load(rd.latest_client_state(k, r))
        if state.local:  # a private adapter (fedit-dp's state holds only its privacy history)
            out[k] = state
    return out


def personal_loss(engine: Engine, state: ClientState, test_enc: list) -> float:
    """Held-out loss of a client's personalized model: backbone + private, or backbone + shared + private."""
    engine.load_adapter(state.local)
    with engine.stacked(state.shared or None):
        return engine.mean_loss(test_enc)


def attack(
    cfg: Config,
    rd: RunDir,
    engine: Engine,
    train: list[Example],
    adapter: StateDict | None,
    name: str,
    shared: StateDict | None = None,
) -> dict:
    """Extraction attack on one adapter (None: the bare backbone; with ``shared``: the stack of both); per-example
    rows go to extraction/NAME.jsonl."""
    from .privacy import attack_engine, sample_targets

    targets = sample_targets(train, cfg.eval.extraction_n, cfg.seed)
    if adapter is not None:
        engine.load_adapter(adapter)
    with engine.model.disable_adapter() if adapter is None else engine.stacked(shared or None):
        res = attack_engine(engine, targets, cfg.eval.extraction_max_new_tokens)
    # the rows quote private training instructions: owner-only (600), like the clients' synthetic data
    write_private_text(rd.path / "extraction" / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in res.per_example))
    return res.summary()


def evaluate_round(
    cfg: Config,
    method: Method,
    engine: Engine,
    rd: RunDir,
    prep: Prepared,
    r: int,
    new_global: StateDict,
    test_enc: list,
) -> tuple[float | None, dict | None]:
    """(held-out loss, extraction attack) after round ``r``: of the shared adapter, or for local-only methods the
    mean held-out loss of the clients' own adapters (those in this run folder)."""
    test_loss = None
    if test_enc and method.shares_adapter:
        engine.load_adapter(new_global)
        test_loss = engine.mean_loss(test_enc)
    elif test_enc:
        states = personal_states(rd, cfg.partition.num_clients, r).values()
        losses = [personal_loss(engine, s, test_enc) for s in states]
        test_loss = sum(losses) / len(losses) if losses else None
    extraction = None
    if cfg.eval.extraction_every_round and method.shares_adapter:
        extraction = attack(cfg, rd, engine, prep.train, new_global, f"shared_round_{r:03d}")
    return test_loss, extraction


def finish_clients(
    cfg: Config, rd: RunDir, engine: Engine, prep: Prepared, test_enc: list
) -> tuple[list[str], list[float], dict]:
    """Save each client's private adapter (those in this run folder) as a peft folder, score it on the held-out set
    and, when asked, attack it, the bare backbone and (from the last round's attack) the shared model."""
    personal, losses, extraction = [], [], {}
    if cfg.eval.extraction_every_round:
        extraction["backbone"] = attack(cfg, rd, engine, prep.train, None, "backbone")
        last = [m for m in rd.read_metrics() if m.get("kind") == "round" and m.get("extraction")]
        if last:
            extraction["shared"] = last[-1]["extraction"]
    for k, state in personal_states(rd, cfg.partition.num_clients, cfg.federation.rounds).items():
        folder = rd.client_final(k)
        save_personal(cfg, engine, folder, state, client=k)
        personal.append(str(folder))
        if test_enc:
            losses.append(personal_loss(engine, state, test_enc))
        if cfg.eval.extraction_every_round:
            extraction[f"private_client_{k}"] = attack(
                cfg, rd, engine, prep.train, state.local, f"private_client_{k}", shared=state.shared
            )
    return personal, losses, extraction


def summary(
    cfg: Config,
    method: Method,
    rd: RunDir,
    *,
    transport: str,
    t_start: float,
    personal: list[str],
    personal_losses: list[float],
    extraction: dict,
) -> dict:
    """``summary.json``: the same keys for every runtime."""
    rounds = [m for m in rd.read_metrics() if m.get("kind") == "round"]
    trained = [m for m in rounds if m["round"] > 0]
    return {
        "run_dir": str(rd.path),
        "algorithm": cfg.algorithm,
        "transport": transport,
        "rounds": cfg.federation.rounds,
        "num_clients": cfg.partition.num_clients,
        "final_adapter": str(rd.final),
        "shares_global_adapter": method.shares_adapter,
        "personal_adapters": personal,  # only those in this run folder; a real site keeps its own
        "train_loss_per_round": [m.get("train_loss") for m in trained],
        "test_loss_per_round": [m.get("test_loss") for m in rounds],
        "personal_test_loss": personal_losses,  # each client's personalized model (stacked: shared + private)
        "extraction": extraction,  # attack on the final shared, private and bare models (eval.extraction_every_round)
        "dp": dp_summary(rd.read_metrics()),  # fedit-dp: each client's epsilon and the largest (fedpit.dp)
        "dropped_per_round": {m["round"]: m["dropped"] for m in trained if m.get("dropped")},
        "seconds_this_process": round(time.perf_counter() - t_start, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bytes_up_total": sum(m["bytes_up"] for m in trained),
        "bytes_down_total": sum(m["bytes_down"] for m in trained),
        "fedpit_version": __version__,
    }


def finish_run(
    cfg: Config,
    method: Method,
    engine: Engine,
    rd: RunDir,
    prep: Prepared,
    global_state: StateDict,
    test_enc: list,
    *,
    transport: str,
    t_start: float,
) -> dict:
    """The end of a run, for every runtime: final adapters, personal scores, ``summary.json``, status complete."""
    save_adapter(cfg, engine, rd.final, global_state)
    personal, losses, extraction = finish_clients(cfg, rd, engine, prep, test_enc)
    result = summary(
        cfg,
        method,
        rd,
        transport=transport,
        t_start=t_start,
        personal=personal,
        personal_losses=losses,
        extraction=extraction,
    )
    rd.finish(result, cfg.federation.rounds)
    return result


def resume_config(run_dir: str | Path) -> Config:
    """The saved config of a run folder that can be resumed (one-line errors otherwise)."""
    from .config import load_config

    saved = RunDir(run_dir).config_file
    if not saved.is_file():
        raise ConfigError(f"{run_dir}: not a fedpit run folder (no {saved.name})")
    cfg = load_config(saved)
    RunDir.check_resumable(run_dir, cfg)  # checksums and fingerprint, before the model loads
    return cfg
