"""Round time side by side in one process: one round of each method, or two settings of one method over a whole run.

**One round per method** (the default mode). One federated round of FedPIT against one of FedIT (and optionally
other methods). Same backbone load, same partition, same starting adapter, same local budget: the difference is the
method's own work (self-generation, a second adapter, IFS scoring). Prints seconds per round and the ratio to FedIT.
``--set`` applies to every method::

    .venv/bin/python benchmarks/round_time.py [--methods fedit,fedpit] [--set key=value ...] [--json PATH]

Every client's reply goes into the aggregate (an earlier version aggregated only the last client's, which made the
server step look cheaper than it is for methods with per-client weighting).

**Two settings of one method over a whole run** (``--whole-run``). A whole run (every ``federation.rounds``) of
``--method`` with the baseline settings, then one with the candidate settings, through the library's own runner
(:class:`fedpit.runner.Runner`, as ``fedpit run`` does), in one process, with the same seed, data and partition
(``--set`` is common to both sides; ``--baseline-set`` and ``--candidate-set`` add each side's own). E.g. the
teacher settings against today's default FedPIT run::

    .venv/bin/python benchmarks/round_time.py --whole-run --method fedpit \\
        --candidate-set selfgen.responder=private --candidate-set fedpit.shared_target=distill \\
        [--baseline-set key=value ...] [--set key=value ...] [--json PATH] [--keep DIR] [--candidate-first]

It prints each round's seconds (from the run's ``metrics.jsonl``: the clients' training, the aggregation, the
round's evaluation and commit), each whole run's wall seconds, the ratios candidate/baseline (whole run, whole run
without the backbone load, each round), peak RSS and each side's held-out loss of the final shared model. Both sides
load the backbone (the runner loads it per run): that load is timed on its own and reported beside the whole run,
as is the rest (data preparation, round 0's evaluation, final adapters and personal scores). The first side also
pays what only happens once per process (a cold file cache for the weights, first-call warm-up); swap the order with
``--candidate-first`` to see how much that is. Peak RSS is the process's, so the second side's figure is the peak
over both. Both sides' configs (and data) are checked before anything runs: a bad key or value is one line on
stderr and exit code 2. The runs go to a temporary folder that is deleted afterwards, or to ``--keep DIR``
(``DIR/baseline`` and ``DIR/candidate``, each with its ``config.toml``, ``metrics.jsonl`` and ``summary.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIDES = ("baseline", "candidate")
SCRIPT_KEYS = {
    "algorithm": "--method names the method of both sides",
    "output_dir": "the runs go to a temporary folder, or to --keep DIR",
    "run_name": "the runs are named baseline and candidate",
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (repeatable): of every method, or with --whole-run of both sides",
    )
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    one = ap.add_argument_group("one round per method (the default mode)")
    one.add_argument("--methods", help="comma-separated methods (default: fedit,fedpit)")
    whole = ap.add_argument_group("two settings of one method over a whole run")
    whole.add_argument("--whole-run", action="store_true", help="time a whole run of each side instead of one round")
    whole.add_argument("--method", help="the method both sides run (default: fedpit)")
    whole.add_argument("--baseline-set", action="append", default=[], metavar="KEY=VALUE", help="baseline's own")
    whole.add_argument("--candidate-set", action="append", default=[], metavar="KEY=VALUE", help="candidate's own")
    whole.add_argument("--keep", metavar="DIR", help="keep the two run folders in DIR (default: a deleted temp folder)")
    whole.add_argument("--candidate-first", action="store_true", help="run the candidate first (order effects)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    from fedpit import logs
    from fedpit.backbone import quiet_libraries
    from fedpit.cli import _one_line
    from fedpit.errors import FedpitError

    try:
        quiet_libraries()
        if args.whole_run:
            return whole_run(args, argv)
        return one_round(args)
    except FedpitError as e:
        print(f"round_time: error: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    finally:
        logs.restore()


# ---------------------------------------------------------------------------------------------------- one round
def one_round(args) -> int:
    from fedpit.algorithms import get_method
    from fedpit.config import load_config
    from fedpit.errors import FedpitError
    from fedpit.federation import client_context, make_engine, prepare

    whole_only = {
        "--method": args.method,
        "--baseline-set": args.baseline_set,
        "--candidate-set": args.candidate_set,
        "--keep": args.keep,
        "--candidate-first": args.candidate_first,
    }
    used = [flag for flag, value in whole_only.items() if value]
    if used:
        raise FedpitError(f"{', '.join(used)}: only with --whole-run")
    cfg = load_config(overrides=args.overrides)
    prep = prepare(cfg)
    t0 = time.perf_counter()
    engine = make_engine(cfg)
    print(
        f"backbone + LoRA loaded in {time.perf_counter() - t0:.1f} s; {cfg.partition.num_clients} clients, "
        f"local_steps {cfg.train.local_steps}, batch {cfg.train.batch_size}, "
        f"selfgen {cfg.selfgen.num_instructions} per client"
    )
    times = {}
    for name in (args.methods or "fedit,fedpit").split(","):
        method = get_method(name)
        clients = [0] if method.pools_data else range(cfg.partition.num_clients)  # every client, as in round 1
        t = time.perf_counter()
        extra, replies = [], []
        for k in clients:
            examples = method.examples(prep.train, prep.partition, k)
            ctx = client_context(cfg, method, 1, k)
            res = method.client_update(engine, engine.initial_adapter, examples, {}, ctx)
            replies.append(res.reply)
            if "synthetic" in res.reply.metrics:
                extra.append(res.reply.metrics["synthetic"])
        method.server_aggregate(engine.initial_adapter, replies)
        times[name] = time.perf_counter() - t
        syn = f", synthetic kept per client {extra}" if extra else ""
        print(f"{name:>12}: {times[name]:7.1f} s per round{syn}")
    base = times.get("fedit")
    ratios = {f"{name}/fedit": t / base for name, t in times.items() if base and name != "fedit"}
    for key, r in ratios.items():
        print(f"ratio {key}: {r:.2f}x")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB")
    if args.json:
        figures = {"seconds_per_round": times, "ratios": ratios, "peak_rss_mb": peak_mb, "overrides": args.overrides}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    return 0


# ---------------------------------------------------------------------------------------------------- whole run
def _value(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _side_configs(args, out: Path) -> dict:
    """Both sides' configs, checked (keys, values, method, data) before anything runs."""
    from fedpit.algorithms import get_method
    from fedpit.config import load_config
    from fedpit.errors import ConfigError

    flags = {"--set": args.overrides, "--baseline-set": args.baseline_set, "--candidate-set": args.candidate_set}
    for flag, sets in flags.items():
        for item in sets:
            key = item.split("=", 1)[0].strip()
            if key in SCRIPT_KEYS:
                raise ConfigError(f"{flag} {key}: set by this script ({SCRIPT_KEYS[key]})")
    method = args.method or "fedpit"
    cfgs = {}
    for side, own in zip(SIDES, (args.baseline_set, args.candidate_set)):
        sets = [*args.overrides, f"algorithm={method}", *own, f"output_dir={out}", f"run_name={side}"]
        try:
            cfgs[side] = load_config(overrides=sets)
        except ConfigError as e:
            raise ConfigError(f"{side}: {e}") from None
        get_method(cfgs[side].algorithm)
    return cfgs


@contextlib.contextmanager
def _timed_backbone_load(record: list):
    """Time each backbone + LoRA load of the runner (it calls ``make_engine`` once per run)."""
    import fedpit.runner

    real = fedpit.runner.make_engine

    def timed(cfg):
        t = time.perf_counter()
        try:
            return real(cfg)
        finally:
            record.append(time.perf_counter() - t)

    fedpit.runner.make_engine = timed
    try:
        yield
    finally:
        fedpit.runner.make_engine = real


def _run_side(cfg) -> dict:
    from fedpit.rundir import RunDir
    from fedpit.runner import Runner

    loads: list[float] = []
    gc.collect()
    t0 = time.perf_counter()
    with _timed_backbone_load(loads):
        summary = Runner(cfg, show_progress=False).run()
    whole = time.perf_counter() - t0
    rows = [m for m in RunDir(summary["run_dir"]).read_metrics() if m.get("kind") == "round" and m["round"] > 0]
    per_round = [m["seconds"] for m in sorted(rows, key=lambda m: m["round"])]
    load = sum(loads)
    test_loss = summary.get("test_loss_per_round") or []
    return {
        "run_dir": summary["run_dir"],
        "rounds": len(per_round),
        "seconds_per_round": per_round,
        "whole_run_seconds": whole,
        "backbone_load_seconds": load,
        "other_seconds": whole - load - sum(per_round),  # data, round 0's evaluation, final adapters, personal scores
        "test_loss_per_round": test_loss,  # index 0: the initial adapter (round 0)
        "final_test_loss": test_loss[-1] if test_loss else None,  # the final shared model's held-out loss
        "personal_test_loss": summary.get("personal_test_loss"),
        "peak_rss_mb": summary.get("peak_rss_mb"),  # the process's peak so far
    }


def _fmt_loss(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def whole_run(args, argv: list[str]) -> int:
    from fedpit import __version__, logs
    from fedpit.config import valid_keys
    from fedpit.errors import FedpitError
    from fedpit.federation import prepare
    from fedpit.fsutil import check_writable_dir, check_writable_file

    if args.methods:
        raise FedpitError("--methods: not with --whole-run (use --method NAME)")
    if args.json:
        check_writable_file(args.json, "--json")
    if args.keep:
        check_writable_dir(args.keep, "--keep")
        for side in SIDES:
            if (Path(args.keep) / side).exists():
                raise FedpitError(f"--keep: {Path(args.keep) / side} exists; give an empty or new folder")
        out = Path(args.keep).absolute()
    else:
        out = Path(tempfile.mkdtemp(prefix="round_time-"))
    try:
        cfgs = _side_configs(args, out)
        rounds = {side: cfg.federation.rounds for side, cfg in cfgs.items()}
        if rounds["baseline"] != rounds["candidate"]:
            raise FedpitError(
                f"federation.rounds: the sides run {rounds['baseline']} and {rounds['candidate']} rounds; a side by "
                "side comparison needs the same number (set it with --set)"
            )
        parts = {side: prepare(cfg).partition.to_dict() for side, cfg in cfgs.items()}  # data errors: before any run
        same_partition = parts["baseline"] == parts["candidate"]
        diff = {
            key: [_value(cfgs["baseline"], key), _value(cfgs["candidate"], key)]
            for key in valid_keys(cfgs["baseline"])
            if key != "run_name" and _value(cfgs["baseline"], key) != _value(cfgs["candidate"], key)
        }
        base_cfg = cfgs["baseline"]
        print(
            f"{base_cfg.algorithm}, {base_cfg.federation.rounds} rounds, {base_cfg.partition.num_clients} clients, "
            f"seed {base_cfg.seed}; candidate differs in: "
            + (", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items()) or "nothing (an A/A run: the noise)")
        )
        if not same_partition:
            print("note: the two sides' settings give different partitions of the data", file=sys.stderr)
        import fedpit.runner  # noqa: F401  (imported before either side's clock starts)

        logs.setup(logs.QUIET)  # warnings and errors only; the runner's round lines would interleave the figures
        order = SIDES[::-1] if args.candidate_first else SIDES
        res = {}
        for side in order:
            res[side] = _run_side(cfgs[side])
            r = res[side]
            print(
                f"{side:>9}: whole run {r['whole_run_seconds']:.1f} s (backbone load "
                f"{r['backbone_load_seconds']:.1f} s, rounds {sum(r['seconds_per_round']):.1f} s, "
                f"rest {r['other_seconds']:.1f} s)",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    b, c = res["baseline"], res["candidate"]
    ratio = c["whole_run_seconds"] / b["whole_run_seconds"]
    b_net, c_net = (s["whole_run_seconds"] - s["backbone_load_seconds"] for s in (b, c))
    ratio_net = c_net / b_net if b_net > 0 else None
    per_round = [y / x if x > 0 else None for x, y in zip(b["seconds_per_round"], c["seconds_per_round"])]
    print(f"{'round':>9} {'baseline s':>11} {'candidate s':>12} {'ratio':>7}")
    for i, (x, y, q) in enumerate(zip(b["seconds_per_round"], c["seconds_per_round"], per_round), 1):
        print(f"{i:>9} {x:>11.1f} {y:>12.1f} {'-' if q is None else f'{q:.2f}x':>7}")
    print(f"{'whole run':>9} {b['whole_run_seconds']:>11.1f} {c['whole_run_seconds']:>12.1f} {ratio:>6.2f}x")
    if ratio_net is not None:
        print(f"ratio candidate/baseline without the backbone load: {ratio_net:.2f}x")
    losses = f"baseline {_fmt_loss(b['final_test_loss'])}, candidate {_fmt_loss(c['final_test_loss'])}"
    print(f"held-out loss of the final shared model: {losses}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB (after the first side: {res[order[0]]['peak_rss_mb']:.0f} MB)")
    if args.json:
        for side, own in zip(SIDES, (args.baseline_set, args.candidate_set)):
            res[side]["settings"] = [*args.overrides, f"algorithm={cfgs[side].algorithm}", *own]  # as given
            if not args.keep:
                res[side]["run_dir"] = None  # deleted with the temporary folder
        figures = {
            "mode": "whole-run",
            "command": shlex.join(["python", "benchmarks/round_time.py", *argv]),
            "method": base_cfg.algorithm,
            "overrides": args.overrides,
            "order": list(order),
            "config_diff": diff,  # key: [baseline, candidate], for every resolved setting that differs
            "same_partition": same_partition,
            "baseline": b,
            "candidate": c,
            "ratio_whole_run": ratio,
            "ratio_whole_run_without_load": ratio_net,
            "ratio_per_round": per_round,
            "peak_rss_mb": peak_mb,
            "fedpit_version": __version__,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
