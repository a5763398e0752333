"""The multiple-choice evaluation itself (see :mod:`fedpit.mcq` for the two protocols): which models to score,
the content-keyed cache of per-benchmark results, accuracy with 95% intervals, the results table and notes, and the
``fedpit evaluate --benchmarks`` / ``compare --benchmarks`` entry points. The package's ``__init__`` re-exports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..extras import require
from .data import BENCHMARKS, gold_index, parse_benchmarks, prepare

PROTOCOLS = ("lm-eval", "flowertune-style")
CACHE_VERSION = 1
Z95 = 1.959964


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_fingerprint(model_path: str) -> str:
    """A model folder's content key: config.json plus (name, size, first and last MiB) of each weights file."""
    from ..backbone import _fingerprint

    p = Path(model_path)
    if not p.is_dir():
        return hashlib.sha256(model_path.encode()).hexdigest()[:16]
    h = hashlib.sha256((p / "config.json").read_bytes() if (p / "config.json").is_file() else b"")
    for f in sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin")):
        h.update(_fingerprint(f).encode())
    return h.hexdigest()[:16]


def adapter_fingerprint(adapter: str | Path | None) -> str | None:
    if adapter is None:
        return None
    a = Path(adapter)
    return _file_digest(a / "adapter_model.safetensors") + _file_digest(a / "adapter_config.json")[:4]


def resolve_models(
    adapters: list[tuple[str, str | Path | list]], model: str | None
) -> tuple[str, list[tuple[str, list[Path | None]]]]:
    """(backbone folder, [(label, [adapter folders] or [None])]): the bare backbone first, then each adapter group.

    The backbone is ``model``, else the one the adapters were trained on, else the packaged SmolLM2.
    """
    from ..adapter_folder import read_adapter_folder
    from ..backbone import DEFAULT_MODEL, resolve_model_path

    groups = [(label, [Path(a) for a in (a if isinstance(a, (list, tuple)) else [a])]) for label, a in adapters]
    names = set()
    for _, folders in groups:
        for a in folders:
            af = read_adapter_folder(a)
            names.add(model or af.meta.get("model") or af.peft_config.get("base_model_name_or_path"))
    if len(names) > 1:
        raise ConfigError(
            f"--adapter: the adapters were trained on different backbones ({', '.join(map(str, names))}); "
            "evaluate them separately"
        )
    name = model or (names.pop() if names else None) or DEFAULT_MODEL
    return resolve_model_path(name), [("backbone", [None])] + groups


def dtype_name(dtype: str) -> str:
    import torch

    from ..backbone import resolve_dtype

    return str(resolve_dtype(dtype, torch.device("cpu"))).removeprefix("torch.")


def _cache_key(**kw) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Settings:
    """What a result depends on besides the adapter and the benchmark (part of its cache key)."""

    model_path: str
    model_fp: str
    protocol: str
    dtype: str
    batch_size: int
    limit: int | None
    cache_dir: str | None = None
    progress: bool = True


def _cache_file(n: str, data_file: Path, adapter: Path | None, st: Settings) -> Path:
    from ..backbone import cache_root

    key = _cache_key(
        v=CACHE_VERSION,
        task=n,
        protocol=st.protocol,
        limit=st.limit or 0,
        dtype=st.dtype,
        batch_size=st.batch_size if st.protocol == "lm-eval" else None,
        model=st.model_fp,
        adapter=adapter_fingerprint(adapter),
        data=data_file.name,
        lm_eval=_lm_eval_version(),
    )
    return cache_root(st.cache_dir) / "mcq" / f"{n}-{key}.json"


def _compute(todo: list[str], prepared: dict, adapter: Path | None, st: Settings) -> tuple[dict, dict]:
    """Fresh results and seconds for the benchmarks in ``todo`` (lm-eval: one call, so the model loads once)."""
    t0 = time.perf_counter()
    if adapter is not None:  # a stacked private adapter: its shared adapter and it, as one ordinary peft folder
        from ..personal import single_adapter_folder

        adapter = single_adapter_folder(adapter)
    if st.protocol == "lm-eval":
        from .harness import run_lm_eval

        files = {n: prepared[n][0] for n in todo}
        fresh = run_lm_eval(
            files, model_path=st.model_path, adapter=adapter, dtype=st.dtype, batch_size=st.batch_size, limit=st.limit
        )
        return fresh, {n: (time.perf_counter() - t0) / len(todo) for n in todo}  # one call: the time is shared
    from .flowertune import run_flowertune

    fresh, secs = {}, {}
    for n in todo:
        t1 = time.perf_counter()
        fresh[n] = run_flowertune(
            n,
            prepared[n][1],
            model_path=st.model_path,
            adapter=adapter,
            dtype=st.dtype,
            limit=st.limit,
            progress=st.progress,
        )
        secs[n] = time.perf_counter() - t1
    return fresh, secs


def run_model(names: list[str], prepared: dict, adapter: Path | None, st: Settings) -> dict[str, dict]:
    """One model on several benchmarks: cached cells are read back, the rest run and cached."""
    from ..rundir import write_json

    files = {n: _cache_file(n, prepared[n][0], adapter, st) for n in names}
    out, todo = {}, []
    for n in names:
        try:
            out[n] = json.loads(files[n].read_text(encoding="utf-8")) | {"cached": True}
        except (OSError, json.JSONDecodeError):  # not run yet, or a damaged cache file: evaluate again
            todo.append(n)
    if not todo:
        return out
    fresh, secs = _compute(todo, prepared, adapter, st)
    for n in todo:
        res = fresh[n] | {"seconds": round(secs[n], 1)}
        files[n].parent.mkdir(parents=True, exist_ok=True)
        write_json(files[n], res)  # atomic
        out[n] = res | {"cached": False}
    return out


def _lm_eval_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def baselines(name: str, records: list[dict]) -> dict:
    """Chance (uniform guess) and majority-class accuracy on the evaluated items."""
    golds = [gold_index(name, r) for r in records]
    k = len(BENCHMARKS[name].choices)
    top, count = Counter(golds).most_common(1)[0]
    n = len(golds)
    return {"chance": 1.0 / k, "majority": count / n, "majority_class": BENCHMARKS[name].choices[top], "n": n}


def check_protocol(protocol: str) -> None:
    """A known protocol, and for ``lm-eval`` the ``mcq`` extra (lm-evaluation-harness) installed."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol: '{protocol}' is not one of {', '.join(PROTOCOLS)}")
    if protocol == "lm-eval":
        require("lm_eval", "--benchmarks with --protocol lm-eval")


def check_args(args) -> list[str]:
    """The command line of ``--benchmarks`` (evaluate, compare, sweep), checked before anything runs or loads: the
    benchmark names (an empty list is an error, not the ordinary evaluation), the protocol and its extra, --limit
    and --batch-size. Returns the benchmark names."""
    names = parse_benchmarks(args.benchmarks)
    check_protocol(args.protocol)
    for opt, value, low in (("--limit", args.limit, 0), ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise ConfigError(f"{opt} must be an integer >= {low}{' (0 = all)' if low == 0 else ''}, got {value}")
    return names


def check_data(benchmarks: str | list[str], data_dir: str | None = None, cache_dir: str | None = None) -> None:
    """Validate (and convert) the benchmark files now: a one-line DataError names the first bad file."""
    for n in parse_benchmarks(benchmarks) if isinstance(benchmarks, str) else benchmarks:
        prepare(n, data_dir, cache_dir)


def evaluate_models(
    benchmarks: str | list[str],
    adapters: list[tuple[str, str | Path | list]] | None = None,
    *,
    model: str | None = None,
    data_dir: str | None = None,
    protocol: str = "lm-eval",
    limit: int | None = None,
    dtype: str = "auto",
    batch_size: int = 8,
    out: str | Path | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict:
    """Score the bare backbone and each adapter on each benchmark; returns (and, with ``out``, writes) the results.

    ``adapters`` is [(label, folder)] or [(label, [folders])]: a list (e.g. the clients' private adapters) is scored
    folder by folder and reported as the mean over its folders.
    """
    check_protocol(protocol)
    names = parse_benchmarks(benchmarks) if isinstance(benchmarks, str) else list(benchmarks)
    prepared = {n: prepare(n, data_dir, cache_dir) for n in names}  # every data error before any model loads
    model_path, models = resolve_models(adapters or [], model)
    st = Settings(
        model_path, model_fingerprint(model_path), protocol, dtype_name(dtype), batch_size, limit, cache_dir, progress
    )
    results = _results_header(names, prepared, st)
    samples: dict = {}
    for label, folders in models:
        per = []
        for k, adapter in enumerate(folders):
            cells = run_model(names, prepared, adapter, st)
            per.append(
                {n: {**c["metrics"], "seconds": c.get("seconds"), "cached": c["cached"]} for n, c in cells.items()}
            )
            for n in names:
                samples[(label if len(folders) == 1 else f"{label}/{k}", n)] = cells[n]["samples"]
        results["models"][label] = {
            "adapters": [str(a) if a else None for a in folders],
            "scores": {n: _mean_scores([p[n] for p in per]) for n in names},
        }
    if out is not None:
        write_results(Path(out), results, samples)
    return results


def _results_header(names: list[str], prepared: dict, st: Settings) -> dict:
    """Settings, and per benchmark its chance and majority-class rows on the evaluated items."""
    results: dict = {
        "protocol": st.protocol,
        "label": protocol_label(st.protocol),
        "model": st.model_path,
        "dtype": st.dtype,
        "limit": st.limit or 0,
        "batch_size": st.batch_size,
        "benchmarks": {},
        "models": {},
    }
    for n in names:
        recs = prepared[n][1][: st.limit] if st.limit else prepared[n][1]
        results["benchmarks"][n] = {
            **baselines(n, recs),
            "lm_eval_task": BENCHMARKS[n].task,
            "note": BENCHMARKS[n].note,
            "data": str(prepared[n][0]),
        }
    return results


def _mean_scores(scores: list[dict]) -> dict:
    """One adapter's scores, or the mean over several (their standard errors averaged: items are shared)."""
    if len(scores) == 1:
        return scores[0]
    out = {
        "n": scores[0]["n"],
        "adapters": len(scores),
        "seconds": sum(s.get("seconds") or 0 for s in scores),
        "cached": all(s["cached"] for s in scores),
        "per_adapter_acc": [s["acc"] for s in scores],
    }
    for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        vals = [s.get(k) for s in scores]
        if all(isinstance(v, (int, float)) for v in vals):
            out[k] = sum(vals) / len(vals)
    return out


def protocol_label(protocol: str) -> str:
    if protocol == "flowertune-style":
        from .flowertune import LABEL

        return LABEL
    return "lm-evaluation-harness, log-likelihood multiple choice, zero-shot"


def ci95(acc: float, n: int) -> tuple[float, float]:
    """Wilson score interval for a proportion (well-behaved at 0 %, 100 % and small n, unlike acc ± 1.96 se)."""
    if n <= 0:
        return float("nan"), float("nan")
    z2 = Z95 * Z95
    centre = (acc + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(acc * (1 - acc) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _cell(score: dict) -> str:
    acc = score["acc"]
    lo, hi = ci95(acc, score["n"])
    s = f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    if "acc_norm" in score:
        s += f" (norm {100 * score['acc_norm']:.1f})"
    return s


def format_table(results: dict) -> str:
    """A Markdown table: chance, majority class, then each model; accuracy % with 95% CI (acc_norm in brackets)."""
    names = list(results["benchmarks"])
    bm = results["benchmarks"]
    head = "| model | " + " | ".join(f"{n} (n={bm[n]['n']})" for n in names) + " | mean of " + str(len(names)) + " |"
    lines = [head, "|" + "---|" * (len(names) + 2)]
    lines.append(
        "| chance | "
        + " | ".join(f"{100 * bm[n]['chance']:.1f}" for n in names)
        + f" | {100 * sum(bm[n]['chance'] for n in names) / len(names):.1f} |"
    )
    lines.append(
        "| majority class | "
        + " | ".join(f"{100 * bm[n]['majority']:.1f} ({bm[n]['majority_class']})" for n in names)
        + f" | {100 * sum(bm[n]['majority'] for n in names) / len(names):.1f} |"
    )
    for label, m in results["models"].items():
        sc = m["scores"]
        mean = sum(sc[n]["acc"] for n in names) / len(names)
        k = len(m["adapters"])
        label = label + (f" (mean of {k})" if k > 1 else "")
        lines.append(f"| {label} | " + " | ".join(_cell(sc[n]) for n in names) + f" | {100 * mean:.1f} |")
    return "\n".join(lines)


def notes(results: dict) -> list[str]:
    bm = results["benchmarks"]
    out = [
        f"Protocol: {results['label']}. Model: {results['model']} ({results['dtype']})."
        + (f" First {results['limit']} items of each set only." if results["limit"] else "")
    ]
    hw = ", ".join(f"{n} ±{100 * Z95 * math.sqrt(0.25 / bm[n]['n']):.1f}" for n in bm)
    out.append(
        f"Accuracy in % with its 95% confidence interval (Wilson; lm-eval's standard errors are in results.json); "
        f"a difference smaller than the interval's half-width (at most {hw} points) is noise."
    )
    for n, b in bm.items():
        out.append(f"{n}: {b['note']}.")
    out.append(
        "CareQA, the FlowerTune medical leaderboard's fourth set, is not available here, so the leaderboard's "
        "4-set mean cannot be computed; the mean column is over these sets only."
    )
    return out


def write_results(out: Path, results: dict, samples: dict) -> None:
    from ..fsutil import write_atomic
    from ..rundir import write_json

    out.mkdir(parents=True, exist_ok=True)
    for (label, n), rows in samples.items():
        d = out / "samples" / label
        d.mkdir(parents=True, exist_ok=True)
        write_atomic(d / f"{n}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json(out / "results.json", results)
    (out / "table.md").write_text(
        format_table(results) + "\n\n" + "\n".join(f"- {x}" for x in notes(results)) + "\n", encoding="utf-8"
    )


def experiment_adapters(results_json: str | Path) -> list[tuple[str, list[str]]]:
    """[(label, adapter folders)] of a compare/sweep experiment: each method's shared adapter and its clients'
    private adapters (one group per method, seed and setting; a group of private adapters is scored as their mean)."""
    from ..rundir import RunDir, read_json

    data = read_json(Path(results_json))
    recs = data.get("records", [])
    seeds = {r.get("seed") for r in recs}
    groups: dict[str, list[str]] = {}
    for r in recs:
        if not r.get("run_dir"):  # the bare backbone's row of a frontier experiment: scored as the backbone
            continue
        summary = read_json(RunDir(r["run_dir"]).summary_file)
        folders = [summary["final_adapter"]] if r["model"] == "shared" else list(summary.get("personal_adapters") or [])
        if not folders:
            continue
        label = (
            f"{r['algorithm']} {r['model']}"
            + (f" s{r['seed']}" if len(seeds) > 1 else "")
            + (f" [{r['setting']}]" if r.get("setting") else "")
        )
        groups[label] = folders
    return list(groups.items())


def cli_experiment(args, results_json: Path) -> None:
    """``fedpit compare/sweep --benchmarks ...``: after the runs, score every shared and private adapter."""
    out = Path(results_json).parent / "benchmarks"
    res = evaluate_models(
        args.benchmarks,
        experiment_adapters(results_json),
        data_dir=args.benchmark_data,
        protocol=args.protocol,
        limit=args.limit or None,
        batch_size=args.batch_size,
        out=out,
    )
    print(format_table(res))
    print()
    for line in notes(res):
        print(line)
    print(f"benchmark results, table and per-item rows in {out}")


def cli_evaluate(args) -> int:
    """``fedpit evaluate --benchmarks ...``: the bare backbone and (with --adapter) the adapter, side by side."""
    check_args(args)
    a = Path(args.adapter) if args.adapter else None
    adapters = [((a.parent.name if a.name == "final" else a.name) or "adapter", a)] if a else []  # run or client name
    out = Path(args.out or (Path(args.adapter) / "eval-benchmarks" if args.adapter else "eval-benchmarks-backbone"))
    try:
        from ..fsutil import check_writable_dir

        check_writable_dir(out, "--out")
    except ImportError:  # an older tree without fsutil
        pass
    t0 = time.perf_counter()
    res = evaluate_models(
        args.benchmarks,
        adapters,
        model=args.model,
        data_dir=args.benchmark_data,
        protocol=args.protocol,
        limit=args.limit or None,
        dtype=args.dtype,
        batch_size=args.batch_size,
        out=out,
    )
    print(format_table(res))
    print()
    for line in notes(res):
        print(line)
    print(f"{time.perf_counter() - t0:.0f} s; results, table and per-item rows in {out}")
    return 0
