"""`fedpit audit` end to end on a tiny FedPIT run with held-out examples and canaries, and its bad inputs."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from fedpit.algorithms import fedpit
from fedpit.audit.canaries import make_canaries
from fedpit.cli import main
from fedpit.config import load_config
from fedpit.data import Example
from fedpit.runner import Runner
from fedpit.selfgen import SelfGenReport

SETTINGS = [
    "algorithm=fedpit",
    "privacy.holdout=0.25",
    "privacy.canaries=3",
    "privacy.canary_repeats=2",
    "privacy.canary_digits=3",
    "privacy.bootstrap=200",
    "eval.extraction_n=3",
    "eval.extraction_max_new_tokens=4",
    "federation.rounds=1",
    "data.limit=80",
]


@pytest.fixture(scope="module")
def audited_run(tiny_model_path, tmp_path_factory):
    """A finished tiny FedPIT run whose (fixed) synthetic data quotes canary 1's secret, as a leaky generator
    would; the audit must find it there."""
    tmp = tmp_path_factory.mktemp("audit")
    cfg = load_config(
        overrides=[
            f"model.name={tiny_model_path}",
            "model.dtype=fp32",
            "model.max_seq_len=96",
            f"model.cache_dir={tmp / 'cache'}",
            f"output_dir={tmp / 'runs'}",
            "run_name=audited",
            "train.local_steps=2",
            "train.batch_size=2",
            "eval.max_examples=4",
            "lora.r=4",
            "lora.alpha=8",
            *SETTINGS,
        ]
    )
    secret = make_canaries(3, 3, 3, cfg.seed)[1].secret
    synthetic = [
        Example(instruction="Describe a healthy habit.", output="Walking most days helps the heart and the mood."),
        Example(instruction="Which number was on the chart?", output=f"The chart said {secret} in the margin."),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fedpit, "self_generate", lambda *a, **k: (list(synthetic), SelfGenReport(kept=len(synthetic))))
        summary = Runner(cfg, show_progress=False).run()
    return Path(summary["run_dir"]), cfg


def test_audit_writes_audit_json_with_the_documented_keys(audited_run, capsys):
    rd, cfg = audited_run
    for f in ("privacy/holdout.jsonl", "privacy/canaries.json"):
        assert stat.S_IMODE((rd / f).stat().st_mode) == 0o600, f  # secrets: owner-only
    assert len((rd / "privacy/holdout.jsonl").read_text().splitlines()) == 20
    assert json.loads((rd / "partition.json").read_text())["labels"].count("canary") == 6
    assert main(["audit", str(rd)]) == 0
    out = capsys.readouterr().out.splitlines()
    a = json.loads((rd / "audit.json").read_text())
    models = ["shared", "client_0", "client_1", "client_2", "backbone"]
    assert a["models"] == models and list(a["mia"]) == models and list(a["canaries"]) == models
    for m in models:
        scores = ["loss", "zlib"] if m == "backbone" else ["loss", "ref", "zlib"]
        assert list(a["mia"][m]) == scores
        for s in scores:
            r = a["mia"][m][s]
            assert set(r) == {"auc", "auc_ci", "tpr_at_10pct_fpr", "n_members", "n_nonmembers"}
            assert 0 <= r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1] <= 1 and r["n_nonmembers"] == 20
        c = a["canaries"][m]
        assert c["repeats"] == 2 and c["space_bits"] == pytest.approx(3 * 3.321928, abs=1e-5)
        assert c["k"] == (1 if m.startswith("client_") else 3) and 0 <= c["exposure_max"] <= c["space_bits"]
        assert c["exposure_mean"] <= c["exposure_max"]
        ex = a["extraction"][m]
        assert ex["n"] == 3 and ex["rouge_l_ci"][0] <= ex["rouge_l"] <= ex["rouge_l_ci"][1]
        assert ("excess_rouge_l" in ex) == (m != "backbone")
    assert a["mia"]["shared"]["loss"]["n_members"] == 60  # every client's examples, canaries left out
    assert sum(a["mia"][f"client_{k}"]["loss"]["n_members"] for k in range(3)) == 60
    assert a["canaries"]["client_0"]["control_k"] == 2
    assert any(h["canary"] == 1 and h["file"].endswith("synthetic.jsonl") for h in a["leaks"])
    assert [line.split(":")[0] for line in out[:5]] == models
    phases = a["phase_seconds"]
    assert list(phases) == ["backbone_losses", *models] and set(phases["backbone"]) == {"mia", "canaries", "extraction"}
    assert any(line.startswith("leak: canary 1's secret") for line in out)
    assert out[-1].startswith("audit written to")


def test_a_site_audits_its_own_model_alone(audited_run, capsys):
    rd, cfg = audited_run
    assert main(["audit", str(rd), "--client", "1"]) == 0
    a = json.loads((rd / "audit.json").read_text())
    assert a["client"] == 1 and a["models"] == ["client_1", "backbone"]
    assert a["canaries"]["client_1"]["k"] == a["canaries"]["backbone"]["k"] == 1  # its own canary only
    assert "control_k" not in a["canaries"]["client_1"]
    assert a["mia"]["backbone"]["loss"]["n_members"] == a["mia"]["client_1"]["loss"]["n_members"]
    assert {h["file"].split("/")[1] for h in a["leaks"] if h["file"].startswith("clients/")} == {"client_1"}
    assert len(capsys.readouterr().out.splitlines()) == 2 + len(a["leaks"]) + 2


def test_a_second_audit_computes_only_the_adapters_losses(audited_run, monkeypatch, capsys):
    """The backbone's losses and attack rows come from the cache; its MIA scores are those cached losses, not a
    second forward pass."""
    from fedpit.audit import run

    rd, cfg = audited_run
    assert main(["audit", str(rd)]) == 0
    calls, real = [], run.example_losses
    monkeypatch.setattr(run, "example_losses", lambda engine, xs, bs: calls.append(len(xs)) or real(engine, xs, bs))
    assert main(["audit", str(rd)]) == 0
    assert len(calls) == 2 * 4  # members, non-members: shared + 3 private models, not the backbone


def _err(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(audited_run, tmp_path, capsys):
    rd, cfg = audited_run
    bare = tmp_path / "bare"
    bare.mkdir()
    code, err = _err(capsys, "audit", str(bare))
    assert code == 2 and len(err) == 1 and "not a fedpit run folder" in err[0]
    for f in ("config.toml", "partition.json"):
        shutil.copy(rd / f, bare / f)
    shutil.copytree(rd / "privacy", bare / "privacy")
    code, err = _err(capsys, "audit", str(bare))
    assert code == 2 and len(err) == 1 and "no adapters to audit" in err[0]
    code, err = _err(capsys, "audit", str(rd), "--client", "7")
    assert code == 2 and err == ["fedpit: error: --client: 7 is outside 0..2 (the run has 3 clients)"]
    shutil.copytree(rd / "final", bare / "final")
    (bare / "privacy" / "canaries.json").unlink()
    code, err = _err(capsys, "audit", str(bare))
    assert code == 2 and len(err) == 1 and "canaries.json: missing" in err[0]
    # a client holding too few members for membership inference: 5 (its canaries are no members)
    part = json.loads((rd / "partition.json").read_text())
    canary = {i for i, label in enumerate(part["labels"]) if label == "canary"}
    moved = [i for i in part["clients"][1] if i not in canary][5:]
    part["clients"][1] = [i for i in part["clients"][1] if i not in moved]
    part["clients"][0] += moved
    shutil.copytree(rd / "privacy", bare / "privacy", dirs_exist_ok=True)
    (bare / "partition.json").write_text(json.dumps(part))
    shutil.copytree(rd / "clients" / "client_1" / "final", bare / "clients" / "client_1" / "final")
    code, err = _err(capsys, "audit", str(bare), "--client", "1")
    assert code == 2 and len(err) == 1 and "client_1 trained on 5 members" in err[0] and "at least 10" in err[0]
    assert not (bare / "audit.json").exists()
