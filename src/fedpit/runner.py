"""The in-process federated runner: load -> validate -> partition -> rounds -> evaluate -> report.

The backbone is loaded once per process; clients and rounds swap adapter weights. Each round and client gets a seed
derived from (run seed, round, client), and all cross-round state (global adapter, clients' private state) is
written to the run folder at the end of every round, so ``--resume`` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import __version__
from .adapters import StateDict, load_state, nbytes, save_state
from .algorithms import LocalBudget, MethodParams, RoundContext, get_method
from .algorithms.base import split_state
from .backbone import load_backbone
from .config import Config, load_config, to_toml
from .data import Example, check_enough, load_demo, load_examples, save_jsonl
from .engine import Engine, LoraSpec, cosine_lr
from .errors import ConfigError
from .partition import Partition, make_partition
from .privacy import extraction_attack, sample_targets
from .rundir import RunDir, read_json, write_json

log = logging.getLogger("fedpit.runner")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_split(cfg: Config, which: str) -> list[Example]:
    src = cfg.data.train if which == "train" else cfg.data.test
    if not src:
        return []
    if src == "demo":
        return load_demo(which)
    return load_examples(src, format=cfg.data.format, output_field=cfg.data.output_field or None,
                         on_duplicate=cfg.data.on_duplicate)


@dataclass
class Prepared:
    """Validated inputs of a run: nothing has been written or loaded onto a device yet."""

    cfg: Config
    train: list[Example]
    test: list[Example]
    partition: Partition

    def client_examples(self, k: int) -> list[Example]:
        return self.partition.subset(self.train, k)


def prepare(cfg: Config) -> Prepared:
    train = load_split(cfg, "train")
    if cfg.data.limit:
        train = train[: cfg.data.limit]
    p = cfg.partition
    check_enough(train, p.num_clients, p.min_per_client, cfg.data.train)
    test = load_split(cfg, "test")
    if cfg.selfgen.public_data:  # validate the ablation's public file before anything is written
        from .selfgen import public_pool

        public_pool(cfg.selfgen.public_data)
    part = make_partition(train, num_clients=p.num_clients, method=p.method, alpha=p.alpha, label=p.label,
                          num_clusters=p.num_clusters, min_per_client=p.min_per_client, seed=cfg.seed)
    return Prepared(cfg, train, test, part)


def client_seed(seed: int, round_idx: int, client: int) -> int:
    return int(np.random.SeedSequence([seed, round_idx, client]).generate_state(1)[0])


def sample_clients(seed: int, round_idx: int, num_clients: int, fraction: float, min_clients: int) -> list[int]:
    """The clients of one round: a seeded draw without replacement (the same for every method)."""
    k = min(num_clients, max(min_clients, int(round(fraction * num_clients))))
    rng = np.random.default_rng([seed, round_idx, 7919])
    return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))


def make_engine(cfg: Config) -> Engine:
    bb = load_backbone(cfg.model.name, dtype=cfg.model.dtype, device=cfg.model.device, cache_dir=cfg.model.cache_dir or None)
    lora = LoraSpec(r=cfg.lora.r, alpha=cfg.lora.alpha, dropout=cfg.lora.dropout,
                    target_modules=tuple(cfg.lora.target_modules))
    try:
        return Engine(bb, lora, template=cfg.model.template, max_seq_len=cfg.model.max_seq_len, seed=cfg.seed)
    except ValueError as e:  # peft: target modules not found in the model
        raise ConfigError(f"lora.target_modules: {str(e).splitlines()[0]}") from None


def budget_of(cfg: Config) -> LocalBudget:
    t = cfg.train
    return LocalBudget(epochs=t.local_epochs, steps=t.local_steps, batch_size=t.batch_size, grad_accum=t.grad_accum,
                       weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, group_by_length=t.group_by_length)


def params_of(cfg: Config) -> MethodParams:
    return MethodParams(selfgen=cfg.selfgen, fedpit=cfg.fedpit, fedprox=cfg.fedprox, fewfedweight=cfg.fewfedweight)


def centralized_budget(cfg: Config) -> LocalBudget:
    """CenIT trains the pooled data with the whole federation's budget per round (times the multiplier)."""
    b = budget_of(cfg)
    scale = cfg.partition.num_clients * cfg.cenit.budget_multiplier
    if b.steps > 0:
        return dataclasses.replace(b, steps=b.steps * scale)
    return dataclasses.replace(b, epochs=b.epochs * cfg.cenit.budget_multiplier)


def round_plan(cfg: Config, method, r: int) -> tuple[list[int], float]:
    """Which clients train in round ``r`` and at which learning rate (cosine over rounds). Every transport (this
    runner, Flower simulation, Flower deployment) asks this function, so they sample the same clients."""
    lr = cosine_lr(r - 1, cfg.federation.rounds, cfg.train.lr, cfg.train.lr_min)
    if method.CENTRALIZED:
        return [0], lr
    return sample_clients(cfg.seed, r, cfg.partition.num_clients, cfg.federation.fraction,
                          cfg.federation.min_clients), lr


def client_context(cfg: Config, method, r: int, k: int) -> RoundContext:
    """Everything client ``k`` needs to know about round ``r``, derived from the config alone."""
    _, lr = round_plan(cfg, method, r)
    budget = centralized_budget(cfg) if method.CENTRALIZED else budget_of(cfg)
    return RoundContext(round=r, num_rounds=cfg.federation.rounds, client_id=k, lr=lr,
                        seed=client_seed(cfg.seed, r, k), budget=budget, params=params_of(cfg))


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


def peft_config_dict(engine: Engine) -> dict:
    d = engine.peft_config.to_dict()
    d = {k: sorted(v) if isinstance(v, set) else v for k, v in d.items()}
    d["base_model_name_or_path"] = engine.backbone.path
    return d


def save_adapter_folder(cfg: Config, rd: RunDir, folder: Path, state: StateDict, engine: Engine) -> None:
    """A peft folder (loadable by ``PeftModel.from_pretrained``) plus fedpit.json: backbone, template, method."""
    rd.save_adapter(folder, state, peft_config_dict(engine),
                    {"model": cfg.model.name, "template": cfg.model.template, "algorithm": cfg.algorithm,
                     "fedpit_version": __version__})


def default_run_name(cfg: Config, suffix: str = "") -> str:
    """``<time>-<algorithm>[-suffix]``: a run folder's name when the config names none."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.algorithm}{'-' + suffix if suffix else ''}"


def new_run_dir(cfg: Config) -> RunDir:
    name = cfg.run_name or default_run_name(cfg)
    path = Path(cfg.output_dir) / name
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"run_name: {path} already exists and is not empty; choose another name or --resume it")
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


class Runner:
    """Runs (or resumes) one federated job in this process."""

    def __init__(self, cfg: Config, *, console: Console | None = None, show_progress: bool = True):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.method = get_method(cfg.algorithm)

    # ------------------------------------------------------------------------------------------------ helpers
    def _save_global(self, rd: RunDir, folder: Path, state: StateDict, engine: Engine) -> None:
        save_adapter_folder(self.cfg, rd, folder, state, engine)

    def _client_state(self, rd: RunDir, k: int, r: int) -> dict:
        f = rd.latest_client_state(k, r)
        return load_state(f) if f is not None else {}

    def _attack(self, rd: RunDir, engine: Engine, prep: Prepared, adapter: StateDict | None, name: str) -> dict:
        """Extraction attack on one adapter (None: the bare backbone); per-example rows go to extraction/NAME.jsonl."""
        cfg = self.cfg
        targets = sample_targets(prep.train, cfg.eval.extraction_n, cfg.seed)
        if adapter is not None:
            engine.load_adapter(adapter)
        with engine.model.disable_adapter() if adapter is None else nullcontext():
            res = extraction_attack(engine.model, engine.tokenizer, targets, template=engine.template,
                                    max_new_tokens=cfg.eval.extraction_max_new_tokens, max_len=engine.max_seq_len)
        folder = rd.path / "extraction"
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in res.per_example),
                                              encoding="utf-8")
        return res.summary()

    def _finish_clients(self, rd: RunDir, prep: Prepared, engine: Engine, test_enc: list):
        """Save each client's private adapter as a peft folder, score it on the held-out set and, when asked,
        attack it, the bare backbone and (from the last round's attack) the shared model."""
        cfg = self.cfg
        personal, losses, extraction = [], [], {}
        if cfg.eval.extraction_every_round:
            extraction["backbone"] = self._attack(rd, engine, prep, None, "backbone")
            last = [m for m in rd.read_metrics() if m.get("kind") == "round" and m.get("extraction")]
            if last:
                extraction["shared"] = last[-1]["extraction"]
        for k in range(cfg.partition.num_clients):
            f = rd.latest_client_state(k, cfg.federation.rounds)
            local = split_state(load_state(f)) if f is not None else {}
            if not local:
                continue
            folder = rd.path / "clients" / f"client_{k}" / "final"
            self._save_global(rd, folder, local, engine)
            personal.append(str(folder))
            if test_enc:
                engine.load_adapter(local)
                losses.append(engine.mean_loss(test_enc))
            if cfg.eval.extraction_every_round:
                extraction[f"private_client_{k}"] = self._attack(rd, engine, prep, local, f"private_client_{k}")
        return personal, losses, extraction

    # ------------------------------------------------------------------------------------------------ run
    def run(self, *, resume: str | Path | None = None, stop_after: int | None = None) -> dict:
        cfg = self.cfg
        t_start = time.perf_counter()
        prep = prepare(cfg)  # all input validation happens here, before anything is written
        engine = make_engine(cfg)
        if resume is not None:
            rd = RunDir(resume)
            prep.partition = Partition.from_dict(read_json(rd.path / "partition.json"))
            start = rd.progress()["completed_rounds"] + 1
            rd.truncate_metrics(start - 1)
            global_state = rd.load_global(start - 1)
        else:
            rd = new_run_dir(cfg)
            rd.config_file.write_text(to_toml(cfg), encoding="utf-8")
            write_json(rd.path / "partition.json", prep.partition.to_dict())
            global_state = engine.initial_adapter
            self._save_global(rd, rd.round_dir(0), global_state, engine)
            start = 1
            rd.set_progress(completed_rounds=0, status="running")
        test_enc = engine.encode(prep.test[: cfg.eval.max_examples]) if cfg.eval.test_loss else []
        if start == 1 and test_enc:
            engine.load_adapter(global_state)
            rd.append_metrics([{"kind": "round", "round": 0, "test_loss": engine.mean_loss(test_enc)}])

        R = cfg.federation.rounds
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=self.console, disable=not self.show_progress, transient=False)
        try:
            with progress if self.show_progress else nullcontext():
                rounds_task = progress.add_task("rounds", total=R, completed=start - 1)
                for r in range(start, R + 1):
                    global_state = self._round(r, rd, prep, engine, global_state, test_enc, progress)
                    progress.update(rounds_task, completed=r)
                    if stop_after is not None and r >= stop_after and r < R:
                        rd.set_progress(status="stopped")
                        return {"run_dir": str(rd.path), "completed_rounds": r, "status": "stopped"}
        except BaseException as e:
            rd.set_progress(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                            error=f"{type(e).__name__}: {e}")
            raise

        self._save_global(rd, rd.path / "final", global_state, engine)
        personal, personal_losses, extraction = self._finish_clients(rd, prep, engine, test_enc)
        rounds = [m for m in rd.read_metrics() if m.get("kind") == "round"]
        summary = {
            "run_dir": str(rd.path),
            "algorithm": cfg.algorithm,
            "rounds": R,
            "num_clients": cfg.partition.num_clients,
            "final_adapter": str(rd.path / "final"),
            "shares_global_adapter": self.method.FEDERATED,
            "personal_adapters": personal,
            "train_loss_per_round": [m["train_loss"] for m in rounds if m["round"] > 0],
            "test_loss_per_round": [m.get("test_loss") for m in rounds],
            "personal_test_loss": personal_losses,  # each client's private adapter on the held-out set
            "extraction": extraction,  # attack on the final shared, private and bare models (eval.extraction_every_round)
            "seconds_this_process": round(time.perf_counter() - t_start, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "bytes_up_total": sum(m["bytes_up"] for m in rounds if m["round"] > 0),
            "bytes_down_total": sum(m["bytes_down"] for m in rounds if m["round"] > 0),
            "fedpit_version": __version__,
        }
        write_json(rd.path / "summary.json", summary)
        rd.set_progress(status="complete", completed_rounds=R)
        return summary

    def _round(self, r: int, rd: RunDir, prep: Prepared, engine: Engine, global_state: StateDict,
               test_enc: list, progress: Progress) -> StateDict:
        cfg = self.cfg
        t0 = time.perf_counter()
        chosen, lr = round_plan(cfg, self.method, r)
        federated = self.method.FEDERATED
        down = nbytes(global_state) if federated else 0
        replies, rows = [], []
        for k in chosen:
            examples = prep.train if self.method.CENTRALIZED else prep.client_examples(k)
            ctx = client_context(cfg, self.method, r, k)
            task = progress.add_task(f"round {r} client {k}", total=None)

            def on_step(step, total, loss, task=task):
                progress.update(task, completed=step, total=total, description=f"round {r} client {k} loss {loss:.3f}")

            state = self._client_state(rd, k, r - 1)
            tc = time.perf_counter()
            result = self.method.client_update(engine, global_state, examples, state, ctx, on_step=on_step)
            seconds = time.perf_counter() - tc
            if result.state:
                save_state(result.state, rd.client_state_file(k, r))
            write_artifacts(rd.path / "clients" / f"client_{k}" / f"round_{r:03d}", result.artifacts)
            progress.remove_task(task)
            reply = result.reply
            replies.append(reply)
            m = reply.metrics
            rows.append({"kind": "client", "round": r, "client": k, "lr": lr, "examples": reply.num_examples,
                         **{key: m[key] for key in m if key not in ("seconds",)},
                         "seconds": round(seconds, 3), "bytes_received": down, "bytes_sent": nbytes(reply.adapter)})
            synth = f", {m['synthetic']} synthetic" if "synthetic" in m else ""
            self.console.log(f"round {r}/{cfg.federation.rounds} client {k}: {len(examples)} examples{synth}, "
                             f"{m.get('steps', 0)} steps, mean loss {m.get('loss', float('nan')):.3f}, {seconds:.1f} s")
            if isinstance(m.get("selfgen"), dict):
                from .selfgen import summary_line

                self.console.log(f"round {r} client {k} {summary_line(m['selfgen'])}")
        new_global = self.method.server_aggregate(global_state, replies)
        test_loss = None
        if test_enc and federated:
            engine.load_adapter(new_global)
            test_loss = engine.mean_loss(test_enc)
        elif test_enc:  # local-only methods: the mean held-out loss of the clients' own adapters
            losses = []
            for k in range(cfg.partition.num_clients):
                f = rd.latest_client_state(k, r)
                if f is not None:
                    engine.load_adapter(split_state(load_state(f)))
                    losses.append(engine.mean_loss(test_enc))
            test_loss = sum(losses) / len(losses) if losses else None
        extraction = None
        if cfg.eval.extraction_every_round and federated:
            extraction = self._attack(rd, engine, prep, new_global, f"shared_round_{r:03d}")
        tokens = sum(row.get("target_tokens", 0) for row in rows)
        train_loss = (sum(row.get("loss", 0.0) * row.get("target_tokens", 0) for row in rows) / tokens) if tokens else None
        rows.append({"kind": "round", "round": r, "clients": chosen, "lr": lr, "train_loss": train_loss,
                     "test_loss": test_loss, "seconds": round(time.perf_counter() - t0, 3),
                     "bytes_up": sum(row["bytes_sent"] for row in rows), "bytes_down": down * len(chosen),
                     "synthetic": sum(row.get("synthetic", 0) for row in rows), "extraction": extraction,
                     "peak_rss_mb": round(peak_rss_mb(), 1)})
        # Commit order: adapter, metrics, then progress. A crash before progress is written means the round re-runs.
        self._save_global(rd, rd.round_dir(r), new_global, engine)
        rd.append_metrics(rows)
        rd.set_progress(completed_rounds=r, status="running")
        if test_loss is not None:
            tl = "n/a" if train_loss is None else f"{train_loss:.3f}"
            self.console.log(f"round {r}: train loss {tl}, held-out loss {test_loss:.3f}")
        return new_global


def resume_config(run_dir: str | Path) -> Config:
    rd = RunDir(run_dir)
    if not rd.config_file.is_file():
        raise ConfigError(f"{run_dir}: not a fedpit run folder (no config.toml)")
    if rd.is_complete():
        raise ConfigError(f"{run_dir}: this run is already complete (summary.json exists)")
    return load_config(rd.config_file)


def run(cfg: Config, **kw) -> dict:
    """Library entry point: ``fedpit.runner.run(load_config(...))``."""
    return Runner(cfg, show_progress=kw.pop("show_progress", False)).run(**kw)


__all__ = ["Runner", "run", "prepare", "resume_config", "sample_clients", "client_seed", "peak_rss_mb"]
