"""One federated round of FedPIT against one of FedIT (and optionally other methods), side by side in one process.

Same backbone load, same partition, same starting adapter, same local budget: the difference is the method's own
work (self-generation, a second adapter, IFS scoring). Prints seconds per round and the ratio to FedIT.

    .venv/bin/python benchmarks/round_time.py [--methods fedit,fedpit] [--set key=value ...] [--json PATH]

Every client's reply goes into the aggregate (an earlier version aggregated only the last client's, which made the
server step look cheaper than it is for methods with per-client weighting).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="fedit,fedpit")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()

    from fedpit.algorithms import get_method
    from fedpit.backbone import quiet_libraries
    from fedpit.config import load_config
    from fedpit.federation import client_context, make_engine, prepare

    quiet_libraries()
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
    for name in args.methods.split(","):
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


if __name__ == "__main__":
    main()
