"""benchmarks/round_time.py --whole-run: two settings of one method, each a whole run through the real runner, on the
tiny model; and bad input (one line, exit code 2, nothing run or written)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from benchmark_scripts import load

from fedpit.config import load_config
from fedpit.rundir import RunDir


@pytest.fixture(scope="module")
def round_time():
    return load("round_time")


def _common(tiny_model_path) -> list[str]:
    sets = [
        f"model.name={tiny_model_path}",
        "model.dtype=fp32",
        "model.max_seq_len=96",
        "federation.rounds=2",
        "train.batch_size=2",
        "eval.max_examples=4",
        "lora.r=4",
        "lora.alpha=8",
    ]
    return [arg for s in sets for arg in ("--set", s)]


def test_whole_run_times_both_settings_of_one_method_side_by_side(round_time, tiny_model_path, tmp_path, capsys):
    out, keep = tmp_path / "figures.json", tmp_path / "kept"
    argv = [
        "--whole-run",
        "--method",
        "fedit",
        *_common(tiny_model_path),
        "--baseline-set",
        "train.local_steps=1",
        "--candidate-set",
        "train.local_steps=2",
        "--json",
        str(out),
        "--keep",
        str(keep),
    ]
    assert round_time.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "train.local_steps 1 -> 2" in printed and "whole run" in printed
    fig = json.loads(out.read_text())
    assert fig["mode"] == "whole-run" and fig["method"] == "fedit" and fig["order"] == ["baseline", "candidate"]
    assert fig["command"].endswith(" ".join(argv[-4:])) and "--whole-run" in fig["command"]
    assert fig["config_diff"] == {"train.local_steps": [1, 2]} and fig["same_partition"] is True
    b, c = fig["baseline"], fig["candidate"]
    assert b["settings"][-1] == "train.local_steps=1" and c["settings"][-1] == "train.local_steps=2"
    for side in (b, c):
        assert side["rounds"] == 2 and len(side["seconds_per_round"]) == 2
        assert all(s > 0 for s in side["seconds_per_round"])
        assert side["whole_run_seconds"] > side["backbone_load_seconds"] > 0
        assert side["whole_run_seconds"] >= sum(side["seconds_per_round"]) + side["backbone_load_seconds"]
        assert len(side["test_loss_per_round"]) == 3 and side["final_test_loss"] == side["test_loss_per_round"][-1]
    assert fig["ratio_whole_run"] == pytest.approx(c["whole_run_seconds"] / b["whole_run_seconds"])
    net = (c["whole_run_seconds"] - c["backbone_load_seconds"]) / (b["whole_run_seconds"] - b["backbone_load_seconds"])
    assert fig["ratio_whole_run_without_load"] == pytest.approx(net)
    per_round = [y / x for x, y in zip(b["seconds_per_round"], c["seconds_per_round"])]
    assert fig["ratio_per_round"] == pytest.approx(per_round)
    # same seed and data: the same starting point; different settings: a different final model
    assert b["test_loss_per_round"][0] == c["test_loss_per_round"][0]
    assert b["final_test_loss"] != c["final_test_loss"]
    # the kept run folders really ran with each side's settings
    for name, side, steps in (("baseline", b, 1), ("candidate", c, 2)):
        assert Path(side["run_dir"]) == (keep / name).absolute()
        assert load_config(keep / name / "config.toml").train.local_steps == steps
        rows = RunDir(keep / name).read_metrics()
        assert {r["steps"] for r in rows if r["kind"] == "client"} == {steps}
        assert (keep / name / "summary.json").is_file()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--candidate-set", "train.no_such_key=1"], "candidate: "),
        (["--baseline-set", "train.local_steps=many"], "baseline: "),
        (["--candidate-set", "algorithm=fedpit"], "--candidate-set algorithm: set by this script"),
        (["--set", "data.train=/no/such/file.jsonl"], "/no/such/file.jsonl"),
        (["--candidate-set", "federation.rounds=3"], "federation.rounds: the sides run 2 and 3 rounds"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_anything_runs(
    round_time, extra, needle, tmp_path, capsys, monkeypatch, tiny_model_path
):
    import fedpit.backbone

    monkeypatch.setattr(fedpit.backbone, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "figures.json"
    argv = ["--whole-run", "--method", "fedit", *_common(tiny_model_path), *extra, "--json", str(out)]
    assert round_time.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("round_time: error: ") and needle in lines[0], captured.err
    assert not out.exists()
    assert list(scratch.iterdir()) == []  # the temporary run folder is gone


def test_whole_run_flags_are_refused_in_the_one_round_mode(round_time, capsys):
    assert round_time.main(["--candidate-set", "train.local_steps=2"]) == 2
    assert capsys.readouterr().err.strip() == "round_time: error: --candidate-set: only with --whole-run"
