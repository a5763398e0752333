"""One federated round of FedPIT against one of FedIT (and optionally other methods), side by side in one process.

Same backbone load, same partition, same starting adapter, same local budget: the difference is the method's own
work (self-generation, a second adapter, IFS scoring). Prints seconds per round and the ratio to FedIT.

    .venv/bin/python benchmarks/round_time.py [--methods fedit,fedpit] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="fedit,fedpit")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
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
        extra = []
        for k in clients:
            examples = method.examples(prep.train, prep.partition, k)
            ctx = client_context(cfg, method, 1, k)
            res = method.client_update(engine, engine.initial_adapter, examples, {}, ctx)
            if "synthetic" in res.reply.metrics:
                extra.append(res.reply.metrics["synthetic"])
        method.server_aggregate(engine.initial_adapter, [res.reply])
        times[name] = time.perf_counter() - t
        syn = f", synthetic kept per client {extra}" if extra else ""
        print(f"{name:>12}: {times[name]:7.1f} s per round{syn}")
    base = times.get("fedit")
    if base:
        for name, t in times.items():
            if name != "fedit":
                print(f"ratio {name}/fedit: {t / base:.2f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
