"""Experiment suite: every method on the same partition, seeds and budget; evaluated; one report.

``fedpit compare`` runs methods x seeds; ``fedpit sweep`` adds a setting axis (e.g. ``partition.alpha`` values for
the non-IID analysis, or ``selfgen.public_data`` for synthetic-vs-public); ``fedpit frontier`` runs the methods, the
baselines a privacy method must beat as curves (FedIT turned down, with fewer local steps, DP-SGD) and the bare
backbone, with a number of seeds per cell. Each run lives in ``OUT/runs/NAME`` and is resumed if interrupted and
skipped if complete, so a stopped experiment continues where it left off. The plan (runs x estimated minutes) is
printed first; ``--audit`` audits every run (:mod:`fedpit.audit`) with one ``[privacy]`` setting and puts its
figures in the results rows.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from .adapter_folder import read_adapter_folder
from .algorithms import get_method
from .audit.data import MIN_SPLIT, held_out
from .config import PRIVATE_MODEL_METHODS, Config, load_config, set_value
from .errors import ConfigError
from .evaluate import engine_for, evaluate
from .federation import load_split, load_train
from .rundir import RunDir, read_json, write_json
from .runner import Runner

log = logging.getLogger("fedpit.compare")


@dataclass
class EvalOptions:
    test: str = ""  # "" = the run's data.test
    format: str = "auto"
    reference: str | None = None
    limit: int = 0
    max_new_tokens: int = 128
    batch_size: int = 8
    judge: object | None = None

    def __post_init__(self):
        for name, value, low in (
            ("--limit", self.limit, 0),
            ("--max-new-tokens", self.max_new_tokens, 1),
            ("--batch-size", self.batch_size, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"{name} must be an integer >= {low}"
                    + (" (0 = all)" if name == "--limit" else "")
                    + f", got {value!r}"
                )


def _parse_set_values(spec: str) -> tuple[str, list[str]]:
    if "=" not in spec:
        raise ConfigError(f"--set-values expects key=v1,v2,..., got '{spec}'")
    key, values = spec.split("=", 1)
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not vals:
        raise ConfigError(f"--set-values {key}: no values")
    twice = sorted({v for v in vals if vals.count(v) > 1})
    if twice:
        raise ConfigError(f"--set-values {key}: {', '.join(twice)} listed more than once")
    return key.strip(), vals


def _check_lists(*lists: tuple[str, list]) -> None:
    for what, values in lists:
        if not values:
            raise ConfigError(f"{what}: nothing to run (the list is empty)")
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            raise ConfigError(f"{what} lists {', '.join(twice)} more than once (each would be run and counted twice)")


def parse_seeds(text: str, flag: str = "--seeds") -> list[int]:
    """``1,2,3`` -> [1, 2, 3]; a one-line error naming ``flag`` for anything else (an empty list is caught later)."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"{flag} expects integers like 1,2,3, got '{text}'") from None


def _cell(base: Config, algo: str, seed: int, label: str = "", sets: list[tuple[str, str]] = ()) -> Config:
    """One cell's validated config: ``base`` with the method, the seed, the settings and a run name."""
    cfg = copy.deepcopy(replace(base, algorithm=algo, seed=seed))
    for k, v in sets:
        set_value(cfg, k, v)
    if algo not in PRIVATE_MODEL_METHODS:  # the teacher settings belong to the methods that keep a private model
        cfg.selfgen.responder, cfg.fedpit.shared_target = "shared", "text"
    cfg.validate()
    tag = label.replace("=", "-").replace("/", "_").replace(".", "_")
    return replace(cfg, run_name="-".join(x for x in (algo, f"s{seed}", tag) if x))


def grid(base: Config, algorithms: list[str], seeds: list[int], sweep: str | None = None) -> list[tuple[str, Config]]:
    """(setting label, config) for every cell; every config is validated before anything runs."""
    _check_lists(("--algorithms", algorithms), ("--seeds", seeds))
    settings: list[tuple[str, list[tuple[str, str]]]] = [("", [])]
    if sweep:
        key, vals = _parse_set_values(sweep)
        settings = [(f"{key}={v}", [(key, v)]) for v in vals]
    cells = []
    for label, sets in settings:
        for seed in seeds:
            for algo in algorithms:
                get_method(algo)
                cells.append((label, _cell(base, algo, seed, label, sets)))
    return cells


# ---------------------------------------------------------------------------------------------------------------
# The frontier: the methods, fedpit-mix over its beta, and the baselines a privacy method must beat, as curves.

FRONTIER_METHODS = "fedit,fedpit,fedpit-mix,locit"
FRONTIER_BETAS = "0.25,0.5,0.6,0.75"
FRONTIER_SERVER_LRS = "0.25,0.5,0.75"
FRONTIER_LOCAL_STEPS = "1,2,3"
FRONTIER_EPSILONS = "1,10,100,1000"
# FedPIT with its private model as teacher (it answers and its probabilities teach): a method, like fedpit-mix's beta
TEACHER = (("selfgen.responder", "private"), ("fedpit.shared_target", "distill"))


@dataclass(frozen=True)
class Knob:
    """A setting the frontier runs one algorithm over: fedpit-mix's beta, or a baseline curve's knob."""

    flag: str
    algorithm: str
    key: str
    what: str
    extra: tuple[tuple[str, str], ...] = ()  # also set in each of its cells


KNOBS = (
    Knob("--betas", "fedpit-mix", "fedpit.beta", "fedpit-mix's beta"),
    Knob("--server-lrs", "fedit", "federation.server_lr", "FedIT turned down"),
    Knob("--local-steps", "fedit", "train.local_steps", "FedIT with fewer local steps"),
    # the target epsilon picks the noise multiplier itself, which must be 0 beside it
    Knob("--epsilons", "fedit-dp", "dp.target_epsilon", "DP-SGD", (("dp.noise_multiplier", "0"),)),
    Knob("--teacher-mixes", "fedpit", "fedpit.teacher_mix", "FedPIT with its private model as teacher", TEACHER),
    # the same teacher keeping every round's kept examples in the shared training pool (its teacher_mix: the config's)
    Knob("--teacher-accumulate", "fedpit", "selfgen.accumulate", "the teacher, accumulating", TEACHER),
)
METHOD_KNOBS = ("fedpit.beta", "fedpit.teacher_mix", "selfgen.accumulate")  # method points judged, not curves


def _check_knob_value(base: Config, knob: Knob, value: str) -> float:
    """A knob's value as a number, refused where it is no point of its curve or repeats one of its ends."""
    if knob.key == "selfgen.accumulate":  # a switch: its one point is the accumulating teacher
        if value != "true":
            raise ConfigError(f"{value!r} is not 'true' (the teacher without accumulation is --teacher-mixes)")
        return 1.0
    try:
        x = float(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a number") from None
    if knob.key == "federation.server_lr" and not 0 < x < 1:
        raise ConfigError(f"{value} is not in (0, 1) (1 is FedIT itself and 0 the bare backbone: both are run anyway)")
    if knob.key == "train.local_steps" and (x != int(x) or x < 1 or x == base.train.local_steps):
        why = "FedIT's own train.local_steps (the fedit run)" if x == base.train.local_steps else "not an integer >= 1"
        raise ConfigError(f"{value} is {why}")
    if knob.key == "dp.target_epsilon" and not (0 < x < math.inf):
        raise ConfigError(f"{value} is not a positive epsilon")
    return x


def knob_values(base: Config, knob: Knob, spec: str) -> list[str]:
    """The values of one knob's flag ('' = none), each checked as the cell it makes would be: one-line errors naming
    the flag."""
    if not spec.strip():
        return []
    try:
        key, vals = _parse_set_values(f"{knob.key}={spec}")
        get_method(knob.algorithm)
        numbers = [_check_knob_value(base, knob, v) for v in vals]
        if len(set(numbers)) < len(numbers):
            raise ConfigError("the same value is listed twice (each would be run and counted twice)")
        for v in vals:
            cell = _cell(base, knob.algorithm, base.seed, f"{key}={v}", [(key, v), *knob.extra])
            if knob.key == "dp.target_epsilon":
                from .federation import prepare

                prepare(cell)  # DP-SGD's preflight: each client's noise for this epsilon (one that cannot be reached)
    except ConfigError as e:
        skip = " ('' skips this curve)" if knob.key not in METHOD_KNOBS else ""
        raise ConfigError(f"{knob.flag} {spec!r}: {e}{skip}") from None
    return vals


@dataclass
class Unit:
    """A cell of the frontier before its seeds: a method (``label`` "") or a knob's value (``label`` "key=value")."""

    algorithm: str
    label: str = ""
    sets: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.label or self.algorithm


def _units(base: Config, methods: list[str], knobs: dict[str, str]) -> list[Unit]:
    """The methods (fedpit-mix once per beta, when --betas lists any), then each baseline curve's points."""
    values = {k.flag: knob_values(base, k, knobs.get(k.flag, "")) for k in KNOBS}  # every flag checked
    units = []
    for m in methods:
        get_method(m)
        mix = m == "fedpit-mix" and values["--betas"]
        units += [Unit(m, f"fedpit.beta={v}", [("fedpit.beta", v)]) for v in values["--betas"]] if mix else [Unit(m)]
    for k in KNOBS[1:]:
        units += [Unit(k.algorithm, f"{k.key}={v}", [(k.key, v), *k.extra]) for v in values[k.flag]]
    return units


def _same_point(item: str, unit: Unit) -> bool:
    if "=" not in item:
        return not unit.label and item == unit.algorithm
    key, value = (x.strip() for x in item.split("=", 1))
    if not unit.label or unit.label.split("=", 1)[0] != key:
        return False
    try:
        return float(value) == float(unit.label.split("=", 1)[1])
    except ValueError:
        return value == unit.label.split("=", 1)[1]


def deciding_units(spec: str | None, units: list[Unit]) -> set[str]:
    """The names of the units that get every --seeds (the others get --sweep-seeds): by default every method
    (fedpit-mix at each beta, the teacher at each teacher_mix and the accumulating teacher included); else the
    listed methods and curve points (``fedpit.beta=0.6``)."""
    if spec is None:
        return {u.name for u in units if not u.label or u.label.split("=", 1)[0] in METHOD_KNOBS}
    items = [x.strip() for x in spec.split(",") if x.strip()]
    chosen = set()
    for item in items:
        found = [u.name for u in units if _same_point(item, u)]
        if not found:
            cells = ", ".join(u.name for u in units)
            raise ConfigError(f"--deciding: {item!r} is not a cell of this frontier (its cells: {cells})")
        chosen.update(found)
    return chosen


def frontier_grid(
    base: Config,
    methods: list[str],
    seeds: list[int],
    betas: str = FRONTIER_BETAS,
    *,
    server_lrs: str = "",
    local_steps: str = "",
    epsilons: str = "",
    teacher_mixes: str = "",
    teacher_accumulate: str = "",
    sweep_seeds: list[int] | None = None,
    deciding: str | None = None,
    audit: bool = False,
) -> list[tuple[str, Config]]:
    """The privacy-utility frontier's cells: the methods, ``fedpit-mix`` once per ``fedpit.beta`` value, and the
    baselines as curves: FedIT turned down (``federation.server_lr``), FedIT with fewer ``train.local_steps`` and
    DP-SGD (``fedit-dp`` at each ``dp.target_epsilon``); '' leaves a curve out. The deciding cells (``deciding``;
    default: every method) run with ``seeds``, the others with ``sweep_seeds`` (default: ``seeds``). Cells go seed
    by seed (an interrupted frontier holds whole seeds first). Without ``audit`` it needs the run's extraction attack
    (leakage and the backbone's floor); every value is checked before anything runs."""
    _check_lists(("--algorithms", methods), ("--seeds", seeds))
    if sweep_seeds is not None:
        _check_lists(("--sweep-seeds", sweep_seeds))
    units = _units(
        base,
        methods,
        {
            "--betas": betas,
            "--server-lrs": server_lrs,
            "--local-steps": local_steps,
            "--epsilons": epsilons,
            "--teacher-mixes": teacher_mixes,
            "--teacher-accumulate": teacher_accumulate,
        },
    )
    full = deciding_units(deciding, units)
    if not audit and not base.eval.extraction_every_round:
        raise ConfigError(
            "eval.extraction_every_round: the frontier needs the extraction attack (leakage and the backbone's floor) "
            "or --audit"
        )
    rest = seeds if sweep_seeds is None else sweep_seeds
    cells = []
    for seed in dict.fromkeys([*seeds, *rest]):
        for u in units:
            if seed in (seeds if u.name in full else rest):
                cells.append((u.label, _cell(base, u.algorithm, seed, u.label, u.sets)))
    return cells


def frontier_cells(base: Config, methods: list[str], seeds: list[int], args) -> list[tuple[str, Config]]:
    """:func:`frontier_grid` from ``fedpit frontier``'s options."""
    sweep = None if args.sweep_seeds is None else parse_seeds(args.sweep_seeds, "--sweep-seeds")
    return frontier_grid(
        base,
        methods,
        seeds,
        args.betas,
        server_lrs=args.server_lrs,
        local_steps=args.local_steps,
        epsilons=args.epsilons,
        teacher_mixes=args.teacher_mixes,
        teacher_accumulate=args.teacher_accumulate,
        sweep_seeds=sweep,
        deciding=args.deciding,
        audit=args.audit,
    )


# ---------------------------------------------------------------------------------------------------------------
# The plan: runs x estimated minutes, printed before the CPU hours.

# Wall minutes of one run at the demo's defaults (3 rounds, 5 local steps, 3 clients) on the 2-core machine
# (docs/results.md, one run at a time); fedit-dp: measured on the frontier (2026-12-06: 355 s a round, each step a
# Poisson batch of dp.batch_size = 32 examples with per-example gradients, against FedIT's 4).
RUN_MINUTES = {
    "fedit": 3.8,
    "fedprox": 3.7,
    "fedpit": 6.8,
    "fedpit-mix": 12.6,
    "fedmit": 6.9,
    "fewfedweight": 7.9,
    "locit": 4.3,
    "locit-sa": 7.5,
    "cenit": 3.4,
    "fedit-dp": 18.0,
}
EVAL_MINUTES = 1.0  # answering 24 test items with one adapter
# The private model as teacher costs more than plain FedPIT: a whole 3-round run of the demo took 1.13x FedPIT's with
# selfgen.responder=private and fedpit.shared_target=distill, 1.23x with selfgen.accumulate=true beside them
# (benchmarks/results/teacher_screen.json, accumulate_cost_ratio_*).
TEACHER_COST, ACCUMULATING_TEACHER_COST = 1.13, 1.23
# The audit's terms come from audits of FedIT runs timed on the idle machine (2 models, 80 extraction targets
# each, 160 MIA examples, 6 canaries; audit.json's phase_seconds: extraction 60-65 s, MIA 50-60 s and canaries
# 20-26 s per model; benchmarks/results/frontier.json, table fedit_by_seed, has each whole audit).
ATTACK_MINUTES = 1.4  # the extraction attack on 100 targets at 128 new tokens
MIA_MINUTES = 0.9 / 160  # an audited model's membership losses, per example of the member/non-member pool
CANARY_MINUTES = 0.4  # an audited model's canary digit trie (6 canaries of 4 digits)


def _adapters(cfg: Config) -> tuple[int, int]:
    """(private adapters, all adapters) a run of this cell ends with: what gets evaluated and audited."""
    private = cfg.partition.num_clients if get_method(cfg.algorithm).personalizes else 0
    return private, int(get_method(cfg.algorithm).shares_adapter) + private


def _pool(cfg: Config, n_train: int) -> tuple[int, int]:
    """(members, non-members) of the audit's pool, ``data.train`` of ``n_train`` examples split as the audit splits."""
    out = held_out(cfg.privacy.holdout, n_train)
    return max(1, n_train - out), out


def _trie_minutes(cfg: Config) -> float:
    """One model's canary digit trie: every model scores every canary's whole space of secrets."""
    pv = cfg.privacy
    return CANARY_MINUTES * pv.canaries / 6 * 10 ** (pv.canary_digits - 4)


def _audit_minutes(cfg: Config, n_train: int, per: float, shared_targets: int, own_targets: int) -> float:
    """The audit of one run, the bare backbone's losses aside (:func:`backbone_minutes`): each audited model's
    extraction attacks, membership losses (the shared model: every member; a private model: its site's) over the
    non-members, and canary trie; the backbone's canary trie and its attacks on the same targets (cached per target,
    but each seed draws its own members, so counted for every run: an overestimate where seeds share targets)."""
    private, adapters = _adapters(cfg)
    members, nonmembers = _pool(cfg, n_train)
    mia = MIA_MINUTES * (cfg.privacy.holdout > 0)
    trie = _trie_minutes(cfg)
    targets = (adapters - private) * shared_targets + private * own_targets
    shared = (adapters - private) * (mia * (members + nonmembers) + trie)
    own = private * (mia * (members // cfg.partition.num_clients + nonmembers) + trie)
    return 2 * per * targets + shared + own + trie  # each target attacked on its model and on the backbone


def _targets(cfg: Config, n_train: int) -> tuple[float, int, int]:
    """(minutes per extraction target, the shared model's targets, a private model's targets)."""
    ev = cfg.eval
    members = _pool(cfg, n_train)[0]
    per = ATTACK_MINUTES * ev.extraction_max_new_tokens / 128 / 100
    shared_targets = min(ev.extraction_n or members, members)
    own_targets = min(ev.extraction_n or members, max(1, members // cfg.partition.num_clients))
    return per, shared_targets, own_targets


def backbone_minutes(cfg: Config, n_train: int) -> float:
    """The bare backbone's membership losses over the whole pool (every seed's members and non-members): computed by
    the first audit on a data file and cached for every later one (:func:`fedpit.audit.run.backbone_cache_file`)."""
    return MIA_MINUTES * n_train * (cfg.privacy.holdout > 0)


def estimate_minutes(cfg: Config, *, audit: bool, n_test: int, n_train: int, audit_only: bool = False) -> float:
    """A rough CPU estimate of one cell: training, evaluation of its adapters, the run's extraction attacks and
    the audit (``audit_only``: the audit alone, for a run already trained and evaluated), the backbone's cached
    audit results aside. ``n_train``: the training file's examples, the audit's member/non-member pool when
    ``privacy.holdout`` takes non-members out of it."""
    per, shared_targets, own_targets = _targets(cfg, n_train)
    audited = _audit_minutes(cfg, n_train, per, shared_targets, own_targets) if audit else 0.0
    if audit_only:
        return audited
    minutes = RUN_MINUTES.get(cfg.algorithm, 7.0) * cfg.federation.rounds / 3
    if cfg.selfgen.responder == "private" or cfg.fedpit.shared_target == "distill":
        minutes *= ACCUMULATING_TEACHER_COST if cfg.selfgen.accumulate else TEACHER_COST
    if cfg.train.local_steps:
        minutes *= 0.4 + 0.6 * cfg.train.local_steps / 5  # about 60% of a FedIT round is its 5 local steps
    private, adapters = _adapters(cfg)
    minutes += EVAL_MINUTES * adapters * n_test / 24
    if cfg.eval.extraction_every_round:
        minutes += per * shared_targets * (cfg.federation.rounds + 1) + per * own_targets * private
    return minutes + audited


def _fmt_minutes(m: float) -> str:
    return f"{m / 60:.1f} h" if m >= 90 else f"{m:.0f} min"


def reusable_audit(run_dir: Path, cfg: Config) -> dict | None:
    """The run's ``audit.json`` when an experiment can reuse it: an audit of every model (not one site's) made with
    the run's ``[privacy]`` and ``eval.extraction_n``; else None."""
    from .audit.run import AUDIT_FILE

    f = Path(run_dir) / AUDIT_FILE
    if not f.is_file():
        return None
    found = read_json(f)
    settings = {**vars(cfg.privacy), "extraction_n": cfg.eval.extraction_n}
    return found if found.get("client") is None and found.get("settings") == settings else None


RUNS_FOLDER = "runs"  # an experiment folder's runs, one folder per cell


def _run_dir(out: str | Path, cfg: Config) -> RunDir:
    """A cell's run folder in the experiment folder ``out`` (where :func:`run_experiment` trains it)."""
    return RunDir(Path(out) / RUNS_FOLDER / cfg.run_name)


def check_reuse(cells: list[tuple[str, Config]], out: str | Path) -> None:
    """Every run ``out`` already holds for these cells, finished or interrupted, was started with the cell's
    settings (the experiment reuses a finished run as it is and resumes an interrupted one): one line naming the run
    and the keys that differ, before anything runs."""
    for _, cfg in cells:
        rd = _run_dir(out, cfg)
        if not rd.config_file.is_file():
            continue
        diff = rd.other_settings(cfg)
        if diff:
            keys = ", ".join(diff[:4]) + (f" and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise ConfigError(
                f"{rd.path}: started with other settings ({keys} differ) and would be reused as it is; "
                "choose another --out for these settings"
            )


def _state(cfg: Config, out: Path | None, audit: bool) -> str:
    """What ``out`` holds of this cell: "finished" (reused as it is), "trained" (its audit still to run) or ""."""
    if out is None:
        return ""
    rd = _run_dir(out, cfg)
    if not rd.is_complete():
        return ""
    return "finished" if not audit or reusable_audit(rd.path, cfg) is not None else "trained"


def plan(
    cells: list[tuple[str, Config]],
    *,
    audit: bool,
    ev: EvalOptions | None = None,
    command: str = "experiment",
    out: str | Path | None = None,
) -> str:
    """The planned runs, grouped by cell, with their seeds and estimated CPU minutes; what gets fewer seeds. Runs
    already in ``out`` are counted apart: a finished one costs nothing, a trained one only its audit."""
    groups: dict[tuple[str, str], list[Config]] = defaultdict(list)
    for label, cfg in cells:
        groups[(cfg.algorithm, label)].append(cfg)
    first = cells[0][1]
    n_train = max(1, len(load_train(first)))
    n_test = len(_tests(first, ev or EvalOptions()))
    lines, total, n_done, to_audit = [], 0.0, 0, 0
    for (algo, label), cfgs in groups.items():
        kw = dict(audit=audit, n_test=n_test, n_train=n_train)
        each, audit_each = estimate_minutes(cfgs[0], **kw), estimate_minutes(cfgs[0], **kw, audit_only=True)
        states = [_state(c, out, audit) for c in cfgs]
        todo, trained = states.count(""), states.count("trained")
        minutes = each * todo + audit_each * trained
        n_done += len(cfgs) - todo
        to_audit += todo + trained
        total += minutes
        seeds = ",".join(str(c.seed) for c in cfgs)
        name = algo + (f" {label}" if label else "")
        line = f"  {name:<40} seeds {seeds:<10} {todo} x {each:4.1f} min = {_fmt_minutes(minutes)}"
        for state, what in (("finished", "finished"), ("trained", "trained, its audit to run")):
            got = [str(c.seed) for c, st in zip(cfgs, states) if st == state]
            line += f" (seed{'s' * (len(got) > 1)} {','.join(got)} {what})" if got else ""
        lines.append(line)
    base = backbone_minutes(first, n_train) if audit and to_audit else 0.0
    if base:  # the first audit on the data file pays it, the others read it from the cache
        total += base
        lines.append(f"  {'bare backbone losses (once per data file)':<40} {'':16} {'about':>8} {_fmt_minutes(base)}")
    most = max(len(v) for v in groups.values())
    fewer = [f"{a} {lab}".strip() for (a, lab), v in groups.items() if len(v) < most]
    runs = f"{len(cells)} runs"
    if n_done:
        runs += f" ({n_done} trained in {out}, reused; {len(cells) - n_done} to train)"
    head = (
        f"fedpit {command}: {runs}, about {_fmt_minutes(total)} of CPU on a 2-core machine like the demo's "
        f"(estimated from the demo's per-run wall times{', with the audit' if audit else ''}; other data or settings "
        "scale differently)"
    )
    tail = [f"  fewer seeds than {most}: {', '.join(fewer)}"] if fewer else []
    return "\n".join([head, *([_audit_line(first)] if audit else []), *lines, *tail])


def _audit_line(cfg: Config) -> str:
    """What ``--audit`` will measure with the one ``[privacy]`` setting, and what it will not."""
    pv = cfg.privacy
    mia = f"membership inference (privacy.holdout = {pv.holdout})" if pv.holdout > 0 else ""
    canaries = f"canary exposure ({pv.canaries} canaries x {pv.canary_repeats})" if pv.canaries > 0 else ""
    extraction = f"extraction (eval.extraction_n = {cfg.eval.extraction_n or 'all'})"
    missing = [
        f"no {w} ({k} is 0)"
        for w, k, on in (("MIA", "privacy.holdout", mia), ("exposure", "privacy.canaries", canaries))
        if not on
    ]
    return "  audit: " + ", ".join(x for x in (mia, canaries, extraction) if x) + "".join(f"; {m}" for m in missing)


# ---------------------------------------------------------------------------------------------------------------
# --audit: the privacy audit of every run, its figures in the results rows.


def _first_difference(a, b) -> str:
    for k, v in vars(a).items():
        if getattr(b, k) != v:
            return f"privacy.{k} = {getattr(b, k)!r} against {v!r}"
    return ""


def check_audit(cells: list[tuple[str, Config]], out: str | Path) -> None:
    """``--audit``: every cell attacked with the same members, non-members and canaries (one ``[privacy]``), enough
    of each, and no run already in ``OUT`` made with other ones. One-line errors, before anything runs."""
    from .audit.data import split_pool

    first = cells[0][1]
    for _, cfg in cells:
        if cfg.privacy != first.privacy:
            raise ConfigError(
                f"--audit: every run must be attacked with the same [privacy] settings, but {cfg.run_name} has "
                f"{_first_difference(first.privacy, cfg.privacy)}: set [privacy] once (--config/--set), not per cell"
            )
    for c in {json.dumps(vars(c.data), sort_keys=True): c for _, c in cells}.values():
        split_pool(c, load_train(c))  # too few members or non-members, no room for the canaries
    _check_client_members(cells)
    for _, cfg in cells:
        saved = _run_dir(out, cfg).config_file
        if saved.is_file() and load_config(saved).privacy != cfg.privacy:
            diff = _first_difference(cfg.privacy, load_config(saved).privacy)
            raise ConfigError(
                f"{saved.parent}: made with {diff}: --audit would attack it with other data (use a new --out)"
            )


def _check_client_members(cells: list[tuple[str, Config]]) -> None:
    """Membership inference on a client's private model needs 10 of its members: checked on each seed's
    partition (cheap: no model) for the methods that keep private adapters."""
    from .federation import prepare

    seen = set()
    for _, cfg in cells:
        key = json.dumps([vars(cfg.data), vars(cfg.partition), vars(cfg.privacy), cfg.seed], sort_keys=True)
        if not get_method(cfg.algorithm).personalizes or cfg.privacy.holdout <= 0 or key in seen:
            continue
        seen.add(key)
        prep = prepare(cfg)
        counts = [sum(1 for i in c if i < prep.private.members) for c in prep.partition.clients]
        if min(counts) < MIN_SPLIT:
            raise ConfigError(
                f"--audit: at seed {cfg.seed} client {counts.index(min(counts))} holds {min(counts)} members; "
                f"membership inference on its private model ({cfg.algorithm}) needs at least {MIN_SPLIT} (a lower "
                "privacy.holdout, fewer clients or partition.min_per_client >= 10)"
            )


def audit_run(run_dir: Path) -> dict:
    """The run's ``audit.json``: reused when made with its settings, else the audit is run (in this process)."""
    from .audit.run import audit, run_config

    found = reusable_audit(run_dir, run_config(run_dir))
    return found if found is not None else audit(run_dir, echo=log.info)


def _mean(values) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def _mia_fields(entries: list[dict]) -> dict:
    out = {}
    for score in ("loss", "ref", "zlib"):
        got = [e[score] for e in entries if score in e]
        for src, dst in (("auc", "auc"), ("tpr_at_10pct_fpr", "tpr10"), ("tpr_at_1pct_fpr", "tpr1")):
            out[f"mia_{score}_{dst}"] = _mean(g.get(src) for g in got)
        if len(got) == 1 and len(got[0].get("auc_ci") or []) == 2:
            out[f"mia_{score}_auc_lo"], out[f"mia_{score}_auc_hi"] = got[0]["auc_ci"]
        if got:
            out["mia_n_members"] = _mean(g["n_members"] for g in got)
            out["mia_n_nonmembers"] = _mean(g["n_nonmembers"] for g in got)
    return out


def _canary_fields(entries: list[dict]) -> dict:
    own = [e for e in entries if e.get("k")]
    if not own:
        return {}
    k = sum(e["k"] for e in own)
    out = {"canary_k": k, "canary_repeats": own[0].get("repeats")}
    out["canary_exposure_mean"] = sum(e["exposure_mean"] * e["k"] for e in own) / k  # over every canary
    out["canary_exposure_max"] = max(e["exposure_max"] for e in own)
    out["canary_control_exposure_mean"] = _mean(e.get("control_exposure_mean") for e in own)
    return out


def _extraction_fields(entries: list[dict]) -> dict:
    out = {
        "audit_rouge_l": _mean(e.get("rouge_l") for e in entries),
        "audit_excess_rouge_l": _mean(e.get("excess_rouge_l") for e in entries),
        "audit_n_targets": _mean(e.get("n") for e in entries),
    }
    if len(entries) == 1 and len(entries[0].get("excess_ci") or []) == 2:
        out["audit_excess_lo"], out["audit_excess_hi"] = entries[0]["excess_ci"]
    return out


def audit_fields(found: dict, kind: str) -> dict:
    """The audit's figures for one results row: of the ``shared`` model, the clients' ``private`` models (their
    mean; exposure over all their canaries, its max the largest) or the ``bare`` backbone, whose
    reference-calibrated MIA score is 0 for every example (AUC 0.5) and whose extraction excess is 0, by
    construction."""
    names = {"shared": ["shared"], "bare": ["backbone"]}.get(kind)
    names = names or [m for m in found.get("models", []) if m.startswith("client_")]
    pick = lambda part: [found.get(part, {})[n] for n in names if n in found.get(part, {})]  # noqa: E731
    out = _mia_fields(pick("mia")) | _canary_fields(pick("canaries")) | _extraction_fields(pick("extraction"))
    if kind == "bare":
        out |= {"mia_ref_auc": 0.5} if out.get("mia_loss_auc") is not None else {}
        out |= {"audit_excess_rouge_l": 0.0} if out.get("audit_rouge_l") is not None else {}
    out |= {"audit_leaks": len(found.get("leaks") or []), "audit_s": found.get("seconds")}
    return {k: v for k, v in out.items() if v is not None}


def _run_or_resume(cfg: Config) -> dict:
    rd = RunDir(Path(cfg.output_dir) / cfg.run_name)
    if rd.is_complete():
        return read_json(rd.summary_file)
    if rd.config_file.is_file():
        return Runner(cfg, show_progress=False).run(resume=rd.path)
    return Runner(cfg, show_progress=False).run()


def _eval_settings(tests: list, ev: EvalOptions) -> dict:
    judge = ev.judge
    return {
        "test": ev.test or "data.test",
        "format": ev.format,
        "reference": ev.reference,
        "n": len(tests),
        "first": tests[0].instruction if tests else "",
        "max_new_tokens": ev.max_new_tokens,
        "judge": None if judge is None else [judge.cfg.base_url, judge.cfg.model, judge.cfg.protocol],
    }


def _evaluate_once(folder: str | None, cfg: Config, tests: list, ev: EvalOptions, dest: Path | None = None) -> dict:
    """Evaluate one adapter folder (None: the bare backbone, saved under ``dest``), or reuse its saved evaluation
    when it was made with the same settings, so a resumed or extended experiment (more seeds, more methods) does not
    re-answer the test set."""
    out = Path(dest or folder) / "eval"
    settings = _eval_settings(tests, ev)
    bare = {"model": cfg.model.name, "template": cfg.model.template} if folder is None else {}
    settings.update(bare)  # an adapter folder names its backbone and template itself
    if (
        (out / "metrics.json").is_file()
        and (out / "settings.json").is_file()
        and read_json(out / "settings.json") == settings
    ):
        return read_json(out / "metrics.json")
    adapter = read_adapter_folder(folder) if folder is not None else None  # read once, for the engine and answers
    engine = engine_for(adapter, max_seq_len=cfg.model.max_seq_len, dtype=cfg.model.dtype, **bare)
    res = evaluate(
        engine,
        adapter,
        tests,
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        judge=ev.judge,
        answers_dir=out,
    )
    res.save(out)
    write_json(out / "settings.json", settings)
    return res.metrics


def _leakage(summary: dict, kind: str) -> dict:
    """The extraction attack's means: on the shared model, or averaged over the clients' private adapters."""
    ext = summary.get("extraction") or {}
    found = (
        [ext["shared"]]
        if kind == "shared" and ext.get("shared")
        else [v for k, v in ext.items() if kind == "private" and k.startswith("private_client_")]
    )
    keys = ("rouge_l", "exact", "prefix_exact")
    return {f"leak_{k}": sum(f[k] for f in found) / len(found) for k in keys if found and all(k in f for f in found)}


def _judge_fields(metrics: dict) -> dict:
    j = metrics.get("judge") or {}
    return {f"judge_{k}": j[k] for k in ("win", "tie", "loss", "wt", "score") if j.get(k) is not None}


def run_experiment(
    cells: list[tuple[str, Config]],
    out: str | Path,
    ev: EvalOptions,
    *,
    name: str = "",
    command: str = "",
    backbone: bool = False,
    audit: bool = False,
) -> Path:
    """Run, evaluate and report every cell; returns the path of results.json. ``command`` is recorded in the
    report as the command that produced it (default: this process's command line). ``backbone``: also evaluate the
    bare backbone on the test set and add it as a row per seed (``algorithm`` "backbone", model "bare"), its leakage
    the floor the runs of that seed measured. ``audit``: audit each run (:func:`fedpit.audit.run.audit`, reusing
    an ``audit.json`` made with the run's settings) and put its figures in the rows (:func:`audit_fields`); the
    backbone's row gets the mean of its figures over the runs of its seed."""
    out = Path(out)
    check_reuse(cells, out)
    out.mkdir(parents=True, exist_ok=True)
    records, curves = [], []
    bare: dict[int, list[dict]] = defaultdict(list)
    t_all = time.perf_counter()
    started = datetime.now().isoformat(timespec="seconds")

    def save() -> None:
        meta = _meta(name, out, t_all, ev, started, command) | ({"audit": True} if audit else {})
        write_json(out / "results.json", {"meta": meta, "records": records, "curves": curves})

    for i, (label, cfg) in enumerate(cells, 1):
        cfg = replace(cfg, output_dir=str(out / RUNS_FOLDER))
        log.info("[%d/%d] %s seed %d%s", i, len(cells), cfg.algorithm, cfg.seed, f" ({label})" if label else "")
        recs, curve, found = _run_cell(cfg, label, ev, audit)
        records += recs
        curves.append(curve)
        if found is not None:
            bare[cfg.seed].append(audit_fields(found, "bare"))
        save()
    if backbone and cells:
        log.info("the bare backbone on the test set")
        records += _backbone_records(out, cells[0][1], records, ev, bare)
        save()
    from .report import write_report

    write_report(out / "results.json")
    return out / "results.json"


def _tests(cfg: Config, ev: EvalOptions) -> list:
    if ev.test:
        from .data import load_examples

        tests = load_examples(ev.test, format=ev.format, output_field=ev.reference)
    else:
        tests = load_split(cfg, "test")
    return tests[: ev.limit] if ev.limit else tests


def _run_cell(cfg: Config, label: str, ev: EvalOptions, audit: bool = False) -> tuple[list[dict], dict, dict | None]:
    """Train (or resume, or reuse) one run, evaluate its models and audit it (``audit``): (results rows,
    loss/leakage curve, the audit or None)."""
    t0 = time.perf_counter()
    summary = _run_or_resume(cfg)
    found = audit_run(Path(summary["run_dir"])) if audit else None
    wall = summary.get("seconds_this_process", time.perf_counter() - t0)
    method = get_method(cfg.algorithm)
    tests = _tests(cfg, ev)
    models = []
    if method.shares_adapter:
        models.append(("shared", [summary["final_adapter"]]))
    if summary.get("personal_adapters"):
        models.append(("private", summary["personal_adapters"]))
    records = []
    for kind, folders in models:
        per = [_evaluate_once(folder, cfg, tests, ev) for folder in folders]
        head = {
            "algorithm": cfg.algorithm,
            "seed": cfg.seed,
            "setting": label,
            "model": kind,
            "run_dir": summary["run_dir"],
            "wall_s": wall,
            "n_test": len(tests),
        }
        records.append(_record(head, per, summary, kind) | (audit_fields(found, kind) if found else {}))
    return records, _curve(cfg, label, summary), found


def _backbone_records(
    out: Path, cfg: Config, records: list[dict], ev: EvalOptions, audits: dict[int, list[dict]] | None = None
) -> list[dict]:
    """The bare backbone's row for each seed: its answers on the test set (greedy, so evaluated once, in
    OUT/backbone/eval) and, as leakage, the floor the extraction attack measured on it in that seed's runs (the
    runs of one seed attack the same targets). Its leakage above the floor is 0 by construction. ``audits``: per
    seed, the backbone's audit figures in each run of that seed (:func:`audit_fields`), averaged into its row."""
    tests = _tests(cfg, ev)
    metrics = _evaluate_once(None, cfg, tests, ev, dest=out / "backbone")
    rows = []
    for seed in dict.fromkeys(r["seed"] for r in records):
        floors = [r["leak_floor_rouge_l"] for r in records if r["seed"] == seed and "leak_floor_rouge_l" in r]
        rec = {"algorithm": "backbone", "seed": seed, "setting": "", "model": "bare", "n_test": len(tests)}
        rec.update({k: metrics[k] for k in ("rouge_l", "cosine", "reference_loss")})
        if floors:
            rec["leak_rouge_l"] = rec["leak_floor_rouge_l"] = sum(floors) / len(floors)
        found = (audits or {}).get(seed) or []
        means = {k: _mean(f.get(k) for f in found) for k in dict.fromkeys(k for f in found for k in f)}
        rows.append(rec | {k: v for k, v in means.items() if v is not None and k != "audit_s"})
    return rows


def _record(head: dict, per: list[dict], summary: dict, kind: str) -> dict:
    """One results row: the mean of each metric over the model's adapters (one shared, or each client's own)."""
    rec = dict(head)
    for key in ("rouge_l", "cosine", "reference_loss"):
        vals = [m[key] for m in per]
        rec[key] = sum(vals) / len(vals)
    judged = [_judge_fields(m) for m in per if m.get("judge")]
    for key in judged[0] if judged else []:
        rec[key] = sum(j[key] for j in judged) / len(judged)
    rec.update(_leakage(summary, kind))
    spent = (summary.get("dp") or {}).get("epsilon") if isinstance(summary.get("dp"), dict) else None
    if isinstance(spent, (int, float)) and not isinstance(spent, bool):
        rec["dp_epsilon"] = spent  # fedit-dp: the epsilon spent (the largest over the clients)
    if (summary.get("extraction") or {}).get("backbone"):
        rec["leak_floor_rouge_l"] = summary["extraction"]["backbone"]["rouge_l"]  # the bare backbone
    return rec


def _curve(cfg: Config, label: str, summary: dict) -> dict:
    rounds = [m for m in RunDir(summary["run_dir"]).read_metrics() if m.get("kind") == "round"]
    return {
        "algorithm": cfg.algorithm,
        "seed": cfg.seed,
        "setting": label,
        "train_loss": [m.get("train_loss") for m in rounds if m["round"] > 0],
        "test_loss": [m.get("test_loss") for m in rounds],
        "leak_rouge_l": [(m.get("extraction") or {}).get("rouge_l") for m in rounds if m["round"] > 0],
    }


def _meta(name: str, out: Path, t0: float, ev: EvalOptions, started: str, command: str = "") -> dict:
    return {
        "name": name or out.name,
        "command": command or " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "started": started,
        "wall_s": round(time.perf_counter() - t0, 1),
        "test_set": ev.test or "the runs' data.test",
        "note": None,
    }


__all__ = [
    "EvalOptions",
    "FRONTIER_BETAS",
    "FRONTIER_EPSILONS",
    "FRONTIER_LOCAL_STEPS",
    "FRONTIER_METHODS",
    "FRONTIER_SERVER_LRS",
    "audit_fields",
    "check_audit",
    "frontier_cells",
    "frontier_grid",
    "grid",
    "parse_seeds",
    "plan",
    "run_experiment",
]
