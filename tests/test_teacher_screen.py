"""benchmarks/teacher_screen.py: its rows from finished runs (no run is started when every summary exists)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_scripts import load


@pytest.fixture(scope="module")
def screen():
    return load("teacher_screen")


def _summary(folder: Path, losses, personal=None, shared=True, seconds=100.0) -> None:
    folder.mkdir(parents=True)
    doc = {
        "test_loss_per_round": losses,
        "personal_test_loss": personal,
        "shares_global_adapter": shared,
        "seconds_this_process": seconds,
    }
    (folder / "summary.json").write_text(json.dumps(doc))


def test_rows_measure_the_share_of_fedits_gap_from_finished_runs(screen, tmp_path, monkeypatch):
    monkeypatch.setattr(screen.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was started again"))
    _summary(tmp_path / "fedit", [3.0, 2.8])
    _summary(tmp_path / "locit", [3.0, 2.9], personal=[2.9, 2.95, 3.0], shared=False)
    _summary(tmp_path / "base", [3.0, 2.99], personal=[2.9, 2.9, 2.9])
    _summary(tmp_path / "responder-private", [3.0, 2.95], personal=[2.8, 2.9, 3.0])
    _summary(tmp_path / "distill", [3.0, 2.9], personal=[2.8, 2.9, 3.0])
    _summary(tmp_path / "both", [3.0, 2.85], personal=[2.8, 2.9, 3.0], seconds=120.0)
    rows, ends = screen.rows_of(tmp_path, "screen")
    assert ends == {"backbone": 3.0, "fedit": 2.8, "rounds": 1}
    by = {r["setting"]: r for r in rows}
    assert [r["gap"] for r in rows if r["gap"] is not None] == pytest.approx([1.0, 0.05, 0.25, 0.5, 0.75])
    assert by["LocIT"]["gap"] is None and by["LocIT"]["loss"] is None  # no shared model
    assert by["LocIT"]["private"] == pytest.approx(2.95)
    assert by["FedIT"]["private"] is None
    both = by["private model answers and teaches (both)"]
    assert both["sets"] == "selfgen.responder=private fedpit.shared_target=distill" and both["seconds"] == 120.0


def test_a_missing_run_is_run_with_its_settings(screen, tmp_path, monkeypatch):
    calls = []

    def fake_run(argv, check):
        calls.append(argv)
        name = next(a for a in argv if a.startswith("run_name=")).split("=", 1)[1]
        _summary(tmp_path / name, [3.0, 2.9, 2.8, 2.7], shared=name != "locit-3r")

    monkeypatch.setattr(screen.subprocess, "run", fake_run)
    _summary(tmp_path / "fedit-3r", [3.0, 2.9, 2.8, 2.7])
    rows, ends = screen.rows_of(tmp_path, "accumulate")
    assert len(calls) == 4 and ends["rounds"] == 3
    last = calls[-1]
    assert "federation.rounds=3" in last and "selfgen.accumulate=true" in last and "algorithm=fedpit" in last
    assert "selfgen.responder=private" in last and "fedpit.shared_target=distill" in last
    assert [r["gap"] for r in rows] == pytest.approx([1.0, None, 1.0, 1.0, 1.0])


def test_a_run_folder_with_other_settings_is_refused_and_an_interrupted_one_resumed(screen, tmp_path, monkeypatch):
    from fedpit.config import load_config, to_toml

    calls = []
    monkeypatch.setattr(screen.subprocess, "run", lambda argv, check: calls.append(argv))
    folder = tmp_path / "both"
    folder.mkdir()
    cfg = load_config(overrides=[f"output_dir={tmp_path}", "run_name=both", "algorithm=fedpit", "federation.rounds=1"])
    (folder / "config.toml").write_text(to_toml(cfg))  # FedPIT as it is, where the teacher is asked for
    with pytest.raises(screen.ScreenError, match=r"other settings \(fedpit.shared_target, selfgen.responder;"):
        screen.run_one(tmp_path, "both", "fedpit", screen.TEACHER, 1)
    assert not calls
    with pytest.raises(FileNotFoundError):  # the settings match: resumed (the fake run writes no summary)
        screen.run_one(tmp_path, "both", "fedpit", [], 1)
    assert calls and calls[0][-2:] == ["--resume", str(folder)]


def test_an_unknown_stage_is_one_line_and_exit_2(screen, capsys):
    assert screen.main(["--stages", "screen,nope"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
