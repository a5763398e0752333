"""Experiment suite: every method on the same partition, seeds and budget; evaluated; one report.

``fedpit compare`` runs methods x seeds; ``fedpit sweep`` adds a setting axis (e.g. ``partition.alpha`` values for
the non-IID analysis, or ``selfgen.public_data`` for synthetic-vs-public). Each run lives in ``OUT/runs/NAME`` and is
resumed if interrupted and skipped if complete, so a stopped experiment continues where it left off.
"""

from __future__ import annotations

import copy
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from rich.console import Console

from .algorithms import get_method
from .config import Config, set_value
from .errors import ConfigError
from .evaluate import engine_for, evaluate
from .federation import load_split
from .rundir import RunDir, read_json, write_json
from .runner import Runner


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
                cfg = copy.deepcopy(replace(base, algorithm=algo, seed=seed))
                for k, v in sets:
                    set_value(cfg, k, v)
                cfg.validate()
                tag = label.replace("=", "-").replace("/", "_").replace(".", "_")
                name = "-".join(x for x in (algo, f"s{seed}", tag) if x)
                cells.append((label, replace(cfg, run_name=name)))
    return cells


FRONTIER_METHODS = "fedit,fedpit,fedpit-mix,fedmit,locit,cenit"
FRONTIER_BETAS = "0,0.25,0.5,0.75,1"


def frontier_grid(
    base: Config, methods: list[str], seeds: list[int], betas: str = FRONTIER_BETAS
) -> list[tuple[str, Config]]:
    """The privacy-utility frontier's cells: every method once per seed, ``fedpit-mix`` once per ``fedpit.beta``
    value, seed by seed (an interrupted frontier holds whole seeds first). It needs the extraction attack, which also
    measures the bare backbone's floor in every run."""
    _check_lists(("--algorithms", methods), ("--seeds", seeds))
    if not base.eval.extraction_every_round:
        raise ConfigError(
            "eval.extraction_every_round: the frontier needs the extraction attack (leakage and the backbone's floor)"
        )
    plain = [m for m in methods if m != "fedpit-mix"]
    cells = []
    for seed in seeds:
        cells += grid(base, plain, [seed]) if plain else []
        cells += grid(base, ["fedpit-mix"], [seed], f"fedpit.beta={betas}") if "fedpit-mix" in methods else []
    return cells


def _run_or_resume(cfg: Config) -> dict:
    rd = RunDir(Path(cfg.output_dir) / cfg.run_name)
    if rd.is_complete():
        return read_json(rd.path / "summary.json")
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
    engine = engine_for(folder, max_seq_len=cfg.model.max_seq_len, dtype=cfg.model.dtype, **bare)
    res = evaluate(
        engine,
        folder,
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
    console: Console | None = None,
    command: str = "",
    backbone: bool = False,
) -> Path:
    """Run, evaluate and report every cell; returns the path of results.json. ``command`` is recorded in the
    report as the command that produced it (default: this process's command line). ``backbone``: also evaluate the
    bare backbone on the test set and add it as a row per seed (``algorithm`` "backbone", model "bare"), its leakage
    the floor the runs of that seed measured."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    records, curves = [], []
    t_all = time.perf_counter()
    started = datetime.now().isoformat(timespec="seconds")

    def save() -> None:
        meta = _meta(name, out, t_all, ev, started, command)
        write_json(out / "results.json", {"meta": meta, "records": records, "curves": curves})

    for i, (label, cfg) in enumerate(cells, 1):
        cfg = replace(cfg, output_dir=str(out / "runs"))
        console.log(f"[{i}/{len(cells)}] {cfg.algorithm} seed {cfg.seed}" + (f" ({label})" if label else ""))
        recs, curve = _run_cell(cfg, label, ev)
        records += recs
        curves.append(curve)
        save()
    if backbone and cells:
        console.log("the bare backbone on the test set")
        records += _backbone_records(out, cells[0][1], records, ev)
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


def _run_cell(cfg: Config, label: str, ev: EvalOptions) -> tuple[list[dict], dict]:
    """Train (or resume, or reuse) one run and evaluate its models: (results rows, loss/leakage curve)."""
    t0 = time.perf_counter()
    summary = _run_or_resume(cfg)
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
        records.append(_record(head, per, summary, kind))
    return records, _curve(cfg, label, summary)


def _backbone_records(out: Path, cfg: Config, records: list[dict], ev: EvalOptions) -> list[dict]:
    """The bare backbone's row for each seed: its answers on the test set (greedy, so evaluated once, in
    OUT/backbone/eval) and, as leakage, the floor the extraction attack measured on it in that seed's runs (the
    runs of one seed attack the same targets). Its leakage above the floor is 0 by construction."""
    tests = _tests(cfg, ev)
    metrics = _evaluate_once(None, cfg, tests, ev, dest=out / "backbone")
    rows = []
    for seed in dict.fromkeys(r["seed"] for r in records):
        floors = [r["leak_floor_rouge_l"] for r in records if r["seed"] == seed and "leak_floor_rouge_l" in r]
        rec = {"algorithm": "backbone", "seed": seed, "setting": "", "model": "bare", "n_test": len(tests)}
        rec.update({k: metrics[k] for k in ("rouge_l", "cosine", "reference_loss")})
        if floors:
            rec["leak_rouge_l"] = rec["leak_floor_rouge_l"] = sum(floors) / len(floors)
        rows.append(rec)
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


__all__ = ["EvalOptions", "frontier_grid", "grid", "run_experiment"]
