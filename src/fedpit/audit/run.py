"""``fedpit audit RUN_DIR [--client K]``: the privacy audit of a finished run, written to ``RUN_DIR/audit.json``.

Models: the run's final shared adapter (``shared``; methods that share one), each client's private model
(``client_K``, from ``clients/client_K/final``, stacked on its shared adapter where it was trained so) and the bare
backbone (``backbone``) as the reference. With ``--client K`` only client K's private model and the backbone are
audited, with client K's data and canaries alone: a site audits its own model without the other sites' data.

For each model:

- **mia** (``privacy.holdout`` > 0): members are the examples the model trained on (the shared model: every
  client's; client K's model: client K's; canaries are not members), non-members the held-out examples; scores
  ``loss``, ``ref`` (not for the backbone, where it is 0) and ``zlib`` (see :mod:`fedpit.audit.mia`);
- **canaries** (``privacy.canaries`` > 0): the exposure of each canary (:mod:`fedpit.audit.canaries`): the
  shared model and the backbone on all of them, a client's model on its own (``k``) and, as controls, on the other
  clients' (``control_*``);
- **extraction**: the prompt attack of :mod:`fedpit.privacy` on a seeded sample of the model's members
  (``eval.extraction_n``), with bootstrap intervals, and its excess over the backbone paired per example.

Then every canary secret found in the run's client outputs and metrics rows (:mod:`fedpit.audit.leaks`).
Forward passes only, batched (``privacy.audit_batch_size``); the backbone's per-example losses and extraction rows
are cached per data file and backbone in the cache folder (``model.cache_dir``), so audits of runs on the same data
reuse them.
Every input is checked before the model loads; an error is one line and writes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..adapter_folder import SHARED, read_adapter_folder
from ..adapters import StateDict
from ..config import Config, load_config
from ..data import Example, demo_path
from ..errors import ConfigError, DataError
from ..fsutil import write_private_text
from ..manifest import read_json_file, sha256_file, write_json
from ..partition import Partition
from ..rundir import RunDir
from . import mia
from .canaries import Canary, digit_token_ids, exposure, prefix_ids, secret_logprobs
from .data import MIN_SPLIT, PrivateData, read_private, split_pool
from .leaks import describe, scan

BACKBONE = "backbone"  # the bare backbone's model name (the shared adapter's is SHARED)
AUDIT_FILE = "audit.json"
ATTACK_SCORES = ("rouge_l", "exact", "prefix_exact")  # what the audit reads of an extraction row
ATTACK_VERSION = 2  # in the backbone cache's key: a change to the attack must not reuse older rows


@dataclass
class Model:
    """One model the audit attacks, with the data it trained on."""

    name: str
    adapter: StateDict | None  # None: the bare backbone
    shared: StateDict | None  # the shared adapter a stacked private adapter sits on
    members: list[Example]
    canaries: list[Canary]  # the canaries it is scored on (its own; all of them for the shared model and backbone)
    controls: list[Canary] = field(default_factory=list)  # canaries it never trained on (private models)


def _digest(e: Example) -> str:
    return hashlib.sha256(json.dumps([e.instruction, e.input, e.output]).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------------------- inputs
def run_config(run_dir: Path) -> Config:
    """The run's own config (its ``config.toml``); a one-line error for a folder that is not a run."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    saved = RunDir(run_dir).config_file
    if not saved.is_file():
        raise ConfigError(f"{run_dir}: not a fedpit run folder (no {saved.name})")
    return load_config(saved)


def client_members(cfg: Config, run_dir: Path, private: PrivateData) -> dict[int, list[Example]]:
    """Each client's training examples (canaries left out), from ``data.train`` split as the run split it and the
    run's ``partition.json``; a one-line error when the data is not the data the run was made with."""
    from ..federation import load_train

    members, made = split_pool(cfg, load_train(cfg))
    if private.holdout and made.holdout != private.holdout:
        raise DataError(
            cfg.data.train, f"not the data this run was made with (its held-out split differs from {run_dir}/privacy)"
        )
    part = Partition.from_dict(read_json_file(RunDir(run_dir).partition_file, "partition"))
    if len(part.labels) != len(members) + len(made.copies(cfg)):
        raise DataError(
            cfg.data.train,
            f"not the data this run was made with ({run_dir}/partition.json indexes {len(part.labels)} examples)",
        )
    return {k: [members[i] for i in idx if i < len(members)] for k, idx in enumerate(part.clients)}


def find_models(cfg: Config, run_dir: Path, private: PrivateData, client: int | None) -> list[Model]:
    """The models to audit (the backbone last); one-line errors for a folder without adapters, a client without a
    private model, or too few members or non-members for membership inference."""
    from ..algorithms import get_method

    n = cfg.partition.num_clients
    if client is not None and not 0 <= client < n:
        raise ConfigError(f"--client: {client} is outside 0..{n - 1} (the run has {n} clients)")
    members = client_members(cfg, run_dir, private)
    models, rd = [], RunDir(run_dir)
    if client is None and get_method(cfg.algorithm).shares_adapter and rd.final.is_dir():
        final = read_adapter_folder(rd.final)  # checked against its manifest
        pooled = [e for k in sorted(members) for e in members[k]]
        models.append(Model(SHARED, final.state, None, pooled, private.canaries))
    for k in [client] if client is not None else range(n):
        folder = rd.client_final(k)
        if not folder.is_dir():
            if client is not None:
                raise ConfigError(f"{folder}: missing (client {k}'s private model; is the run complete?)")
            continue
        af = read_adapter_folder(folder)  # a stacked one with the shared adapter under it
        own = [c for c in private.canaries if c.client == k]
        controls = [c for c in private.canaries if c.client != k] if client is None else []
        models.append(Model(f"client_{k}", af.state, af.shared_state, members[k], own, controls))
    if not models:
        raise ConfigError(
            f"{run_dir}: no adapters to audit (no final/ shared adapter, no clients/client_K/final/); audit a "
            "finished run"
        )
    scope = models[0].members if client is not None else [e for k in sorted(members) for e in members[k]]
    scored = private.canaries if client is None else models[0].canaries
    models.append(Model(BACKBONE, None, None, scope, scored))
    _check_sizes(cfg, models, private)
    return models


def _check_sizes(cfg: Config, models: list[Model], private: PrivateData) -> None:
    if cfg.privacy.holdout <= 0:
        return
    if len(private.holdout) < MIN_SPLIT:
        raise ConfigError(
            f"privacy.holdout: {len(private.holdout)} non-members; membership inference needs at least {MIN_SPLIT}"
        )
    for m in models:
        if len(m.members) < MIN_SPLIT:
            raise ConfigError(
                f"privacy.holdout: {m.name} trained on {len(m.members)} members; membership inference needs at "
                f"least {MIN_SPLIT} (fewer clients, or more data per client)"
            )


# ---------------------------------------------------------------------------------------------------------- losses
def example_losses(engine, examples: list[Example], batch_size: int) -> np.ndarray:
    """Each example's mean response loss under the model as loaded (nan where nothing of the response fits)."""
    enc = [engine.encode([e]) for e in examples]
    idx = [i for i, e in enumerate(enc) if e]
    out = np.full(len(examples), np.nan)
    if idx:
        out[idx] = engine.example_losses([enc[i][0] for i in idx], batch_size=batch_size)
    return out


def _data_digest(cfg: Config) -> str:
    src = cfg.data.train
    path = demo_path("train") if src == "demo" else Path(src)
    return sha256_file(path) if path.is_file() else hashlib.sha256(src.encode()).hexdigest()


def backbone_cache_file(cfg: Config, engine, kind: str = "losses") -> Path:
    """Where the backbone's per-example results of one ``kind`` on ``data.train`` are cached: one file per data
    file (sha256), backbone (resolved path, dtype, device, template, max_seq_len) and kind, in the cache folder.
    ``losses``: the per-example losses; ``extraction``: the extraction attack's rows (its settings in the key)."""
    from ..backbone import cache_root

    bb = engine.backbone
    key = [_data_digest(cfg), bb.path, str(bb.dtype), engine.device.type, engine.template, engine.max_seq_len]
    if kind != "losses":
        key += [kind, ATTACK_VERSION, cfg.eval.extraction_max_new_tokens, cfg.privacy.audit_batch_size]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:20]
    return cache_root(cfg.model.cache_dir or None) / "audit" / f"backbone-{kind}-{digest}.json"


def _backbone_cached(cfg: Config, engine, kind: str, examples: list[Example], compute: Callable) -> dict:
    """The bare backbone's result of ``kind`` for each example, by example digest: from the cache, computing (with
    the adapter disabled) only what it lacks; ``compute(examples)`` returns one JSON value per example."""
    f = backbone_cache_file(cfg, engine, kind)
    try:
        stored = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    todo = list({_digest(e): e for e in examples if _digest(e) not in stored}.values())
    if todo:
        with engine.model.disable_adapter():
            stored |= dict(zip(map(_digest, todo), compute(todo)))
        write_private_text(f, json.dumps(stored) + "\n")
    return {k: stored[k] for k in {_digest(e) for e in examples}}


def backbone_losses(cfg: Config, engine, examples: list[Example]) -> dict[str, float]:
    """The bare backbone's loss on each example, by example digest (cached per data file and backbone)."""

    def compute(todo: list[Example]) -> list[float | None]:
        values = example_losses(engine, todo, cfg.privacy.audit_batch_size)
        return [None if math.isnan(v) else float(v) for v in values]

    got = _backbone_cached(cfg, engine, "losses", examples, compute)
    return {k: (math.nan if v is None else v) for k, v in got.items()}


def backbone_attack_rows(cfg: Config, engine, targets: list[Example]) -> dict[str, dict]:
    """The extraction attack's scores of the bare backbone on ``targets``, by example digest (cached like its
    losses: every audit of a run on the same data attacks the backbone on examples earlier audits attacked). Only
    the numbers are kept (:data:`ATTACK_SCORES`), never the private instruction or the continuation."""

    def compute(todo: list[Example]) -> list[dict]:
        return [{k: row[k] for k in ATTACK_SCORES} for row in attack_rows(cfg, engine, todo).values()]

    return _backbone_cached(cfg, engine, "extraction", targets, compute)


# ---------------------------------------------------------------------------------------------------------- measures
@contextlib.contextmanager
def loaded(engine, m: Model) -> Iterator[None]:
    """Within: the engine's model is ``m`` (the bare backbone, or backbone + adapter [+ shared adapter under it])."""
    if m.adapter is None:
        with engine.model.disable_adapter():
            yield
        return
    engine.load_adapter(m.adapter)
    with engine.stacked(m.shared or None):
        yield


def measure_mia(cfg: Config, engine, m: Model, nonmembers: list[Example], base: dict[str, float]) -> dict:
    """``mia.<model>``: each score's AUC, interval, TPR at low FPR and counts (the model must be loaded)."""
    bs = cfg.privacy.audit_batch_size
    bm, bn = (np.array([base[_digest(e)] for e in xs]) for xs in (m.members, nonmembers))
    if m.adapter is None:  # the bare backbone: its losses are the (cached) reference itself
        lm, ln = bm, bn
    else:
        lm, ln = example_losses(engine, m.members, bs), example_losses(engine, nonmembers, bs)
    zm, zn = (np.array([mia.zlib_bytes(e.output) for e in xs]) for xs in (m.members, nonmembers))
    scores = {"loss": (-lm, -ln)}
    if m.adapter is not None:
        scores["ref"] = (-(lm - bm), -(ln - bn))
    scores["zlib"] = (-lm / zm, -ln / zn)
    out = {}
    for i, (name, (sm, sn)) in enumerate(scores.items()):
        sm, sn = sm[np.isfinite(sm)], sn[np.isfinite(sn)]
        out[name] = mia.report(sm, sn, bootstrap=cfg.privacy.bootstrap, seed=_seed(cfg, 1, i))
    return out


def _seed(cfg: Config, *tags: int) -> list[int]:
    return [cfg.seed, 0xA0D1, *tags]


def canary_prefixes(cfg: Config, engine, canaries: list[Canary]) -> tuple[dict[int, list[int]], list[int]]:
    """Each canary's prefix ids and the digit token ids (one-line errors when the tokenizer cannot be trie-scored)."""
    if not canaries:
        return {}, []
    digits = digit_token_ids(engine.tokenizer)
    kw = dict(template=engine.template, max_len=engine.max_seq_len)
    return {c.index: prefix_ids(engine.tokenizer, c, digits, **kw) for c in canaries}, digits


def _summary(values: dict[int, float]) -> tuple[float | None, float | None]:
    v = list(values.values())
    return (float(np.mean(v)), float(np.max(v))) if v else (None, None)


def measure_canaries(cfg: Config, engine, m: Model, prefixes: dict[int, list[int]], digits: list[int]) -> dict:
    """``canaries.<model>``: exposure of each of its canaries (and controls), their mean and max, in bits."""
    pv = cfg.privacy

    def exposures(canaries: list[Canary]) -> dict[int, float]:
        return {
            c.index: exposure(
                secret_logprobs(engine.model, prefixes[c.index], digits, pv.canary_digits, pv.trie_batch_size),
                c.secret,
            )
            for c in canaries
        }

    own = exposures(m.canaries)
    mean, top = _summary(own)
    out = {"k": len(own), "repeats": pv.canary_repeats, "space_bits": pv.canary_digits * math.log2(10)}
    out |= {"exposure_mean": mean, "exposure_max": top, "exposure": {str(k): v for k, v in own.items()}}
    if m.controls:
        ctl = exposures(m.controls)
        mean, top = _summary(ctl)
        out |= {"control_k": len(ctl), "control_exposure_mean": mean, "control_exposure_max": top}
    return out


def attack_rows(cfg: Config, engine, targets: list[Example]) -> dict[str, dict]:
    """The prompt (and token-prefix) attack of :mod:`fedpit.privacy` on each target, model as loaded: its
    per-example rows by example digest."""
    from ..privacy import attack_engine

    res = attack_engine(engine, targets, cfg.eval.extraction_max_new_tokens, cfg.privacy.audit_batch_size)
    return {_digest(e): row for e, row in zip(targets, res.per_example)}


def measure_extraction(cfg: Config, rows: list[dict], base: list[dict] | None, seed: list[int]) -> dict:
    """``extraction.<model>``: the attack's means with the Rouge-L interval and, given the backbone's rows on the
    same examples (``base``), the excess Rouge-L paired per example, with its interval."""
    n = cfg.privacy.bootstrap
    rouge = [r["rouge_l"] for r in rows]
    mean = lambda key: float(np.mean([r[key] for r in rows])) if rows else None  # noqa: E731
    out = {"n": len(rows), "rouge_l": mean("rouge_l"), "rouge_l_ci": list(mia.bootstrap_mean_ci(rouge, n, seed))}
    out |= {"exact": mean("exact"), "prefix_exact": mean("prefix_exact")}
    if base is not None:
        excess = [r - b["rouge_l"] for r, b in zip(rouge, base)]
        out["excess_rouge_l"] = float(np.mean(excess)) if excess else None
        out["excess_ci"] = list(mia.bootstrap_mean_ci(excess, n, seed + [1]))
    return out


# ---------------------------------------------------------------------------------------------------------- audit
def audit(run_dir: str | Path, client: int | None = None, echo: Callable[[str], None] = print) -> dict:
    """Audit a finished run (see the module doc); writes ``audit.json`` in it atomically and returns its content.
    ``echo`` gets one line per model, one per leak found, and where the file went."""
    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    cfg = run_config(run_dir)
    private = read_private(run_dir, cfg)
    models = find_models(cfg, run_dir, private, client)
    from ..federation import make_engine

    engine = make_engine(cfg)
    prefixes, digits = canary_prefixes(cfg, engine, models[-1].canaries + [c for m in models for c in m.controls])
    result = {"run_dir": str(run_dir), "algorithm": cfg.algorithm, "client": client, "models": [m.name for m in models]}
    result |= {"settings": {**vars(cfg.privacy), "extraction_n": cfg.eval.extraction_n}}
    measures = _measure_all(cfg, engine, models, private, prefixes, digits)
    result |= measures
    hits = scan(run_dir, private.canaries if client is None else models[0].canaries, client)
    result |= {"leaks": hits, "seconds": round(time.perf_counter() - t0, 2), "fedpit_version": __version__}
    write_json(run_dir / AUDIT_FILE, result)
    for m in models:
        echo(model_line(m.name, result))
    for hit in hits:
        echo(describe(hit))
    if private.canaries:
        echo(f"leaks: {len(hits)} canary secret(s) found in the run's client outputs and metrics rows")
    echo(f"audit written to {run_dir / AUDIT_FILE} ({result['seconds']:.0f} s)")
    return result


@contextlib.contextmanager
def _timed(into: dict, phase: str) -> Iterator[None]:
    """Record the seconds the block takes as ``into[phase]``."""
    t = time.perf_counter()
    yield
    into[phase] = round(time.perf_counter() - t, 2)


def _measure_all(cfg: Config, engine, models: list[Model], private: PrivateData, prefixes, digits) -> dict:
    """mia, canaries and extraction for every model. The backbone goes first: its losses and attack rows are the
    others' reference (it is attacked on the union of every model's extraction targets)."""
    from ..privacy import sample_targets

    out = {"mia": {}, "canaries": {}, "extraction": {}, "phase_seconds": {}}
    holdout = private.holdout if cfg.privacy.holdout > 0 else []
    targets = {m.name: sample_targets(m.members, cfg.eval.extraction_n, cfg.seed) for m in models}
    union = list({_digest(e): e for m in models for e in targets[m.name]}.values())
    with _timed(out["phase_seconds"], "backbone_losses"):
        base_loss = backbone_losses(cfg, engine, [e for m in models for e in m.members] + holdout) if holdout else {}
    base_rows = {}
    for i, m in enumerate([models[-1], *models[:-1]]):
        spent = out["phase_seconds"][m.name] = {}
        with loaded(engine, m):
            if holdout:
                with _timed(spent, "mia"):
                    out["mia"][m.name] = measure_mia(cfg, engine, m, holdout, base_loss)
            if private.canaries:
                with _timed(spent, "canaries"):
                    out["canaries"][m.name] = measure_canaries(cfg, engine, m, prefixes, digits)
            with _timed(spent, "extraction"):
                rows = (
                    backbone_attack_rows(cfg, engine, union)
                    if m.adapter is None
                    else attack_rows(cfg, engine, targets[m.name])
                )
        base_rows = rows if m.adapter is None else base_rows
        mine = [rows[_digest(e)] for e in targets[m.name]]
        base = None if m.adapter is None else [base_rows[_digest(e)] for e in targets[m.name]]
        out["extraction"][m.name] = measure_extraction(cfg, mine, base, _seed(cfg, 2, i))
    order = ["backbone_losses"] + [m.name for m in models]
    return {k: {name: v[name] for name in order if name in v} for k, v in out.items()}


def _fmt_ci(value, ci) -> str:
    if value is None or ci is None or any(x is None or not math.isfinite(x) for x in [value, *ci]):
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def model_line(name: str, result: dict) -> str:
    """The printed line of one model."""
    parts = []
    if name in result["mia"]:
        scores = result["mia"][name]
        aucs = ", ".join(f"{s} {_fmt_ci(r['auc'], r['auc_ci'])}" for s, r in scores.items())
        first = next(iter(scores.values()))
        parts.append(f"MIA AUC {aucs} ({first['n_members']} members, {first['n_nonmembers']} non-members)")
    if name in result["canaries"]:
        c = result["canaries"][name]
        if c["k"]:
            exp = f"exposure mean {c['exposure_mean']:.2f}, max {c['exposure_max']:.2f} of {c['space_bits']:.1f} bits"
            parts.append(f"canaries {exp} ({c['k']} canaries x {c['repeats']})")
        if c.get("control_k"):
            parts.append(f"controls {c['control_exposure_mean']:.2f} bits mean ({c['control_k']} canaries)")
    ex = result["extraction"].get(name)
    if ex:
        text = f"extraction Rouge-L {_fmt_ci(ex['rouge_l'], ex['rouge_l_ci'])}"
        if "excess_rouge_l" in ex:
            text += f", {_fmt_ci(ex['excess_rouge_l'], ex['excess_ci'])} over the backbone"
        parts.append(text)
    return f"{name}: " + ("; ".join(parts) or "nothing measured")


__all__ = ["AUDIT_FILE", "audit", "backbone_cache_file", "find_models", "model_line", "run_config"]
