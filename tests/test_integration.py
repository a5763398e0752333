"""End to end on the real packaged SmolLM2-135M-Instruct (converted once into the fedpit cache)."""

import json
from pathlib import Path

import pytest

from fedpit.config import load_config
from fedpit.runner import Runner

pytestmark = pytest.mark.integration


def test_fedit_on_smollm2_two_clients_one_round_loss_falls(tmp_path, smollm2_path):
    cfg = load_config(
        overrides=[
            "algorithm=fedit",
            "partition.num_clients=2",
            "federation.rounds=1",
            "train.local_steps=6",
            "train.batch_size=2",
            "model.max_seq_len=256",
            "eval.max_examples=8",
            f"output_dir={tmp_path}",
            "run_name=it",
            "data.limit=40",
        ]
    )
    summary = Runner(cfg, show_progress=False).run()
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    rounds = {r["round"]: r for r in rows if r["kind"] == "round"}
    # held-out response loss of the shared adapter falls after one federated round
    assert rounds[1]["test_loss"] < rounds[0]["test_loss"] - 0.02, rounds
    clients = [r for r in rows if r["kind"] == "client"]
    assert len(clients) == 2 and all(r["steps"] == 6 for r in clients)
    assert summary["peak_rss_mb"] < 6000


def test_fedpit_on_smollm2_private_adapters_learn_and_synthetic_data_is_written(tmp_path, smollm2_path):
    cfg = load_config(
        overrides=[
            "algorithm=fedpit",
            "partition.num_clients=2",
            "federation.rounds=1",
            "train.local_steps=6",
            "train.batch_size=2",
            "model.max_seq_len=256",
            "eval.max_examples=8",
            f"output_dir={tmp_path}",
            "run_name=pit",
            "data.limit=40",
            "selfgen.num_instructions=2",
            "selfgen.max_response_tokens=48",
        ]
    )
    summary = Runner(cfg, show_progress=False).run()
    rd = Path(summary["run_dir"])
    before = summary["test_loss_per_round"][0]
    assert len(summary["personal_test_loss"]) == 2
    assert all(loss < before - 0.02 for loss in summary["personal_test_loss"]), (before, summary)
    counts = json.loads((rd / "clients" / "client_0" / "round_001" / "selfgen.json").read_text())
    assert counts["generated_instructions"] >= 2
