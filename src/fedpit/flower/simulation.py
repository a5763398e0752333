"""Flower's simulation runtime: the fedpit ServerApp and ClientApp with Ray-driven virtual SuperNodes.

One client at a time by default (``num_cpus`` = all cores per client): on a 2-core CPU, parallel actors only add
memory (``platform-measurements.md`` section 3). Each virtual SuperNode gets ``partition-id`` from Flower.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import Config, to_toml
from ..errors import FedpitError
from ..rundir import RunDir, read_json


def simulate(
    cfg: Config, *, resume: bool = False, num_cpus_per_client: float | None = None, verbose: bool = False
) -> dict:
    """Run ``cfg`` through ``flwr.simulation.run_simulation``; returns the run's summary (raises if it failed)."""
    from dataclasses import replace

    from ..extras import require

    require("ray", "fedpit flower simulate")  # flwr[simulation]; plain flwr has no simulation runtime
    import torch
    from flwr.simulation import run_simulation

    from ..algorithms import get_method
    from ..federation import named
    from .client_app import app as client_app
    from .server_app import make_server_app

    # output_dir is made absolute for Ray's workers; the ServerApp reads a config file, exactly as in a deployment.
    get_method(cfg.algorithm)
    cfg = named(replace(cfg, output_dir=str(Path(cfg.output_dir).absolute())), "flowersim").validate()
    cfg_file = Path(cfg.output_dir) / f".{cfg.run_name}.flower-config.toml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(to_toml(cfg), encoding="utf-8")
    # Ray starts its workers at nice 15; the simulation is the job here, so it should not yield to everything else.
    os.environ.setdefault("RAY_worker_niceness", "0")
    cpus = os.cpu_count() or 1
    per_client = num_cpus_per_client or cpus
    gpus = 1.0 if torch.cuda.is_available() else 0.0
    backend = {
        "client_resources": {"num_cpus": per_client, "num_gpus": gpus},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": int(gpus),
            "include_dashboard": False,
            "logging_level": "ERROR",
            "log_to_driver": verbose,
        },
    }
    try:
        run_simulation(
            make_server_app({"config": str(cfg_file), "resume": resume}),
            client_app,
            num_supernodes=cfg.partition.num_clients,
            backend_name="ray",
            backend_config=backend,
            verbose_logging=verbose,
        )
    finally:
        cfg_file.unlink(missing_ok=True)
    rd = RunDir(Path(cfg.output_dir) / cfg.run_name)
    if not rd.is_complete():
        p = rd.progress()
        raise FedpitError(
            f"Flower simulation did not complete: {rd.path} status {p.get('status')}"
            + (f" ({p['error']})" if p.get("error") else "")
        )
    return read_json(rd.summary_file)


__all__ = ["simulate"]
