"""Fault injection on the run folder (issue 13): every file of an interrupted run truncated, bit-flipped or deleted,
then ``--resume``; every adapter folder damaged, then ``fedpit evaluate --adapter``; ``kill -9`` at several points of
a round, then ``--resume``; non-finite losses and adapters; the config fingerprint; atomic run folders.

Every case must end in a completed run whose final adapter is bit-identical (max diff 0.0) to an uninterrupted run's,
or in exactly one line ``fedpit: error: ...`` naming the damaged file with exit code 2: never a traceback, never a
deleted committed round. The runs are made once per module (tiny random LLaMA, FedPIT so that the clients' private
state and synthetic data are in the folder) and copied per case."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedpit.adapters import load_state, max_abs_diff
from fedpit.algorithms import REGISTRY
from fedpit.cli import main
from fedpit.config import load_config, to_toml
from fedpit.errors import ConfigError, FedpitError
from fedpit.rundir import MANIFEST, RunDir, write_json
from fedpit.runner import Runner

SETTINGS = [
    "algorithm=fedpit",
    "model.dtype=fp32",
    "model.max_seq_len=64",
    "partition.num_clients=2",
    "federation.rounds=2",
    "train.local_steps=1",
    "train.batch_size=2",
    "eval.max_examples=4",
    "lora.r=2",
    "lora.alpha=4",
    "selfgen.num_instructions=2",
    "selfgen.max_instruction_tokens=6",
    "selfgen.max_response_tokens=6",
    "selfgen.measure=false",
]


def _cfg(model: str, out: Path, name: str):
    return load_config(overrides=[*SETTINGS, f"model.name={model}", f"output_dir={out}", f"run_name={name}"])


def _final(run_dir: Path) -> dict:
    """The final global adapter and each client's final private adapter (FedPIT trains the private one on local
    data from its state of the round before: it depends on every round's client state being carried right)."""
    return {
        f: load_state(Path(run_dir) / f / "adapter_model.safetensors")
        for f in ("final", "clients/client_0/final", "clients/client_1/final")
    }


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(max_abs_diff(a[f], b[f]) for f in a)


def _files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in Path(run_dir).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tiny_model_path, tmp_path_factory):
    """An uninterrupted 2-round run (the reference), and the same run stopped after round 1."""
    base = tmp_path_factory.mktemp("faults")
    ref = Runner(_cfg(tiny_model_path, base, "ref"), show_progress=False).run()
    stopped = Runner(_cfg(tiny_model_path, base, "stopped"), show_progress=False).run(stop_after=1)
    assert stopped["status"] == "stopped"
    return SimpleNamespace(
        model=tiny_model_path,
        ref=Path(ref["run_dir"]),
        stopped=Path(stopped["run_dir"]),
        final=_final(Path(ref["run_dir"])),
    )


def _copy(src: Path, tmp_path: Path, name: str = "t") -> Path:
    dst = tmp_path / "runs" / name
    shutil.copytree(src, dst)
    return dst


def _damage(path: Path, how: str) -> bool:
    """Truncate, flip a bit in the middle of, or delete ``path``; False when that changed nothing (an empty file)."""
    data = path.read_bytes()
    if not data and how != "delete":
        return False
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    else:
        path.unlink()
    return True


def _losses(run_dir: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["round"], r.get("client"), r.get("loss"), r.get("test_loss")) for r in rows]


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.startswith("fedpit: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _check_outcome(code: int, err: str, run_dir: Path, rel: str, final_of: Path, ref_final: dict) -> str:
    """Completed and bit-identical, or one line naming ``rel`` with exit code 2."""
    if code == 0:
        assert _max_diff(_final(final_of), ref_final) == 0.0
        return "completed"
    assert code == 2, err
    line = _error_line(err)
    assert rel in line or str(run_dir / rel) in line, line
    return "error"


# stopped after round 1 of 2: these files (the client files are client 0's; client 1's are alike)
RESUME_FILES = [
    "config.toml",
    "partition.json",
    "fingerprint.json",
    "progress.json",
    "metrics.jsonl",
    "rounds/round_000/adapter_model.safetensors",
    "rounds/round_000/adapter_config.json",
    "rounds/round_000/fedpit.json",
    "rounds/round_000/manifest.json",
    "rounds/round_001/adapter_model.safetensors",
    "rounds/round_001/adapter_config.json",
    "rounds/round_001/fedpit.json",
    "rounds/round_001/manifest.json",
    "clients/client_0/state.round_001.safetensors",
    "clients/client_0/round_001/synthetic.jsonl",
    "clients/client_0/round_001/selfgen.json",
]
RECOVERED = {"progress.json", "metrics.jsonl", "fingerprint.json"}  # rebuilt from the checksummed round manifests
DETECTED = {f for f in RESUME_FILES if f.endswith(".safetensors") or f.startswith(("rounds/", "clients/"))}


def test_the_fault_suite_covers_every_file_of_the_stopped_run(runs):
    """Each file of the interrupted run folder is in RESUME_FILES, or is client 1's twin of one that is."""
    twins = {f.replace("client_1", "client_0") for f in _files(runs.stopped)}
    assert twins == set(RESUME_FILES)


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("rel", RESUME_FILES)
def test_a_damaged_file_resumes_identically_or_is_named(runs, tmp_path, capsys, rel, how):
    rd = _copy(runs.stopped, tmp_path)
    before = set(_files(rd)) - {rel}
    changed = _damage(rd / rel, how)
    capsys.readouterr()
    code = main(["run", "--resume", str(rd), "--quiet"])
    outcome = _check_outcome(code, capsys.readouterr().err, rd, rel, rd, runs.final)
    assert before <= set(_files(rd)), "a committed file was deleted"
    if rel in RECOVERED:
        assert outcome == "completed"
        assert _losses(rd) == _losses(runs.ref)  # the rows of every round, as the uninterrupted run wrote them
    if rel in DETECTED and changed:  # a committed round's file that changed is never trained on
        assert outcome == "error"
        assert not (rd / "summary.json").exists()


COMPLETE_FILES = [
    "summary.json",
    "final/adapter_model.safetensors",
    "final/manifest.json",
    "rounds/round_002/adapter_model.safetensors",
    "rounds/round_002/manifest.json",
]


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("rel", COMPLETE_FILES)
def test_resume_of_a_damaged_complete_run_names_the_file_or_finishes_it_again(runs, tmp_path, capsys, rel, how):
    """A complete run is not resumed, but its adapters are verified first, so the refusal names a damaged file;
    without summary.json it is finished again, bit-identical."""
    rd = _copy(runs.ref, tmp_path)
    before = set(_files(rd)) - {rel}
    _damage(rd / rel, how)
    capsys.readouterr()
    code = main(["run", "--resume", str(rd), "--quiet"])
    outcome = _check_outcome(code, capsys.readouterr().err, rd, rel, rd, runs.final)
    assert outcome == ("completed" if (rel, how) == ("summary.json", "delete") else "error")
    assert before <= set(_files(rd)), "a committed file was deleted"


EVAL_FILES = ["adapter_model.safetensors", "adapter_config.json", "fedpit.json", MANIFEST]


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("folder", ["final", "rounds/round_001"])
@pytest.mark.parametrize("name", EVAL_FILES)
def test_evaluate_on_a_damaged_adapter_is_a_one_line_error_naming_the_file(
    runs, tmp_path, capsys, monkeypatch, folder, name, how
):
    rd = _copy(runs.ref, tmp_path)
    rel = f"{folder}/{name}"
    _damage(rd / rel, how)
    monkeypatch.setattr("fedpit.evaluate.embedding_cosine", lambda a, b, embed=None: [0.0] * len(a))
    capsys.readouterr()
    argv = ["evaluate", "--adapter", str(rd / folder), "--limit", "1", "--max-new-tokens", "2", "--out", str(tmp_path)]
    code = main(argv)
    err = capsys.readouterr().err
    if code == 0:  # only an adapter without its manifest (a peft folder from elsewhere) is taken as it is
        assert (name, how) == (MANIFEST, "delete"), err
    else:
        line = _error_line(err)
        assert code == 2 and (rel in line or str(rd / rel) in line), err


# ---------------------------------------------------------------------------------------------- kill -9
KILL_POINTS = [
    "round_1_start",  # before the first client
    "round_2_client_0",  # between clients
    "commit_2_adapter",  # during the commit: adapter written, nothing else
    "commit_2_metrics",  # metrics appended, no commit record
    "commit_2_manifest",  # commit record written, progress.json not yet
]


def _killed_run(runs, tmp_path: Path, point: str) -> Path:
    cfg = _cfg(runs.model, tmp_path / "runs", "k")
    f = tmp_path / "k.toml"
    f.write_text(to_toml(cfg))
    env = {**os.environ, "FEDPIT_FAULT_KILL": point}
    p = subprocess.run(
        [sys.executable, "-m", "fedpit", "run", "--config", str(f), "--quiet"], env=env, capture_output=True, text=True
    )
    assert p.returncode == -9, p.stderr[-2000:]
    return tmp_path / "runs" / "k"


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_at_any_point_of_a_round_resumes_to_the_uninterrupted_result(runs, tmp_path, capsys, point):
    rd = _killed_run(runs, tmp_path, point)
    assert not (rd / "summary.json").exists()
    capsys.readouterr()
    assert main(["run", "--resume", str(rd), "--quiet"]) == 0, capsys.readouterr().err
    assert _max_diff(_final(rd), runs.final) == 0.0
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["round"], r.get("client", -1)) for r in rows) == sorted(
        [(0, -1)] + [(r, k) for r in (1, 2) for k in (-1, 0, 1)]
    )
    assert json.loads((rd / "progress.json").read_text())["status"] == "complete"


def test_kill_9_before_round_0_is_committed_leaves_nothing_to_resume_and_deletes_nothing(runs, tmp_path, capsys):
    rd = _killed_run(runs, tmp_path, "commit_0_metrics")
    (rd / "progress.json").unlink()  # as if killed before progress.json was first written
    before = {f: (rd / f).read_bytes() for f in _files(rd)}
    capsys.readouterr()
    assert main(["run", "--resume", str(rd), "--quiet"]) == 2
    assert "never committed its initial adapter" in _error_line(capsys.readouterr().err)
    assert {f: (rd / f).read_bytes() for f in _files(rd)} == before


# ---------------------------------------------------------------------------------------------- Flower server
class _NoNodes:
    """A Grid with no SuperNode connected: the server opens (resumes) the run folder, then finds no clients."""

    def get_node_ids(self):
        return []


def test_flower_server_resume_recovers_a_missing_progress_json_and_deletes_nothing(runs, tmp_path):
    from fedpit.flower.server_app import FlowerServer

    rd = _copy(runs.stopped, tmp_path, "fl")
    (rd / "progress.json").unlink()
    before = set(_files(rd)) - {"progress.json"}
    cfg = _cfg(runs.model, tmp_path / "runs", "fl")
    cfg.flower.wait_for_nodes_s = 0.0
    with pytest.raises(FedpitError, match="0 client node"):
        FlowerServer(cfg, grid=_NoNodes(), resume=True).run()
    assert before <= set(_files(rd))
    p = json.loads((rd / "progress.json").read_text())
    assert (p["completed_rounds"], p["status"]) == (1, "failed")
    # a folder whose initial adapter was never committed: a one-line error, nothing deleted
    bare = tmp_path / "runs" / "bare"
    bare.mkdir()
    for f in ("config.toml", "partition.json", "fingerprint.json"):
        shutil.copy(rd / f, bare / f)
    with pytest.raises(ConfigError, match="never committed its initial adapter"):
        FlowerServer(replace(cfg, run_name="bare"), grid=_NoNodes(), resume=True).run()
    assert sorted(os.listdir(bare)) == ["config.toml", "fingerprint.json", "partition.json"]


def test_flower_simulation_resumes_a_run_folder_without_progress_json(runs, tmp_path):
    """The real Flower path: the ServerApp resumes (resume = true) an interrupted folder whose progress.json is gone
    and finishes it like the in-process runner (FedIT: this module's FedPIT makes no synthetic data on the random
    model, so its upload would equal the private adapter's untrained lora_A and Flower's private guard refuses it)."""
    from fedpit.flower.simulation import simulate

    def cfg(name):
        c = replace(_cfg(runs.model, tmp_path / "runs", name), algorithm="fedit")
        c.flower.wait_for_nodes_s = 60.0
        return c

    ref = Runner(cfg("ref"), show_progress=False).run()
    rd = Path(Runner(cfg("sim"), show_progress=False).run(stop_after=1)["run_dir"])
    (rd / "progress.json").unlink()
    summary = simulate(cfg("sim"), resume=True)
    assert Path(summary["run_dir"]) == rd and summary["transport"] == "flower"
    a, b = (load_state(Path(d) / "final" / "adapter_model.safetensors") for d in (ref["run_dir"], rd))
    assert (
        max_abs_diff(a, b) <= 1e-5
        and max_abs_diff(a, load_state(rd / "rounds/round_001/adapter_model.safetensors")) > 0
    )


# ---------------------------------------------------------------------------------------------- non-finite values
def _patched(monkeypatch, *, loss=None, adapter=False, aggregate=False):
    """FedPIT whose round-2 update of client 1 reports a nan loss (of its private training, which takes steps) /
    uploads a nan adapter, or whose aggregate is inf."""
    original = REGISTRY["fedpit"]

    def client_update(engine, global_adapter, examples, state, ctx, on_step=None):
        res = original.client_update(engine, global_adapter, examples, state, ctx, on_step=on_step)
        if ctx.round == 2 and ctx.client_id == 1:
            if loss is not None:
                res.reply.metrics["local_loss"] = loss
            if adapter:
                k = next(iter(res.reply.adapter))
                res.reply.adapter[k] = res.reply.adapter[k] * float("nan")
        return res

    def server_aggregate(global_adapter, replies):
        new = original.server_aggregate(global_adapter, replies)
        return {k: v * float("inf") for k, v in new.items()} if aggregate else new

    monkeypatch.setitem(
        REGISTRY, "fedpit", replace(original, client_update=client_update, server_aggregate=server_aggregate)
    )


@pytest.mark.parametrize(
    "kind, words",
    [
        ({"loss": float("nan")}, "round 2, client 1: non-finite training loss (local_loss"),
        ({"loss": float("inf")}, "round 2, client 1: non-finite training loss (local_loss"),
        ({"adapter": True}, "round 2, client 1: the uploaded adapter"),
        ({"aggregate": True}, "round 2: the aggregated global adapter"),
    ],
)
def test_a_non_finite_round_stops_with_one_line_and_keeps_the_last_good_round(
    runs, tmp_path, capsys, monkeypatch, kind, words
):
    rd = _copy(runs.stopped, tmp_path)
    with monkeypatch.context() as m:
        _patched(m, **kind)
        capsys.readouterr()
        assert main(["run", "--resume", str(rd), "--quiet"]) == 2
        assert words in _error_line(capsys.readouterr().err)
    p = json.loads((rd / "progress.json").read_text())
    assert (p["status"], p["completed_rounds"]) == ("failed", 1)
    assert not (rd / "summary.json").exists() and not (rd / "rounds" / "round_002" / MANIFEST).exists()
    assert RunDir.check_resumable(rd) == 1  # round 1 is intact: resuming without the fault finishes the run
    assert main(["run", "--resume", str(rd), "--quiet"]) == 0
    assert _max_diff(_final(rd), runs.final) == 0.0


def test_json_the_run_writes_is_always_valid(tmp_path, runs):
    write_json(tmp_path / "s.json", {"loss": float("nan"), "per_round": [1.0, float("inf"), None]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"loss": None, "per_round": [1.0, None, None]}

    def strict(x):
        raise ValueError(x)

    for f in ("summary.json", "progress.json", "fingerprint.json", "rounds/round_002/manifest.json"):
        json.loads((runs.ref / f).read_text(), parse_constant=strict)
    for line in (runs.ref / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=strict)


# ---------------------------------------------------------------------------------------------- metrics.jsonl
def test_a_torn_last_metrics_line_is_dropped_with_a_warning(runs, tmp_path, caplog):
    rd = _copy(runs.ref, tmp_path)
    whole = (rd / "metrics.jsonl").read_text()
    (rd / "metrics.jsonl").write_text(whole + '{"kind": "client", "round": 3, "lo')
    assert RunDir(rd).read_metrics() == [json.loads(x) for x in whole.splitlines()]
    assert "cut short" in caplog.text and "metrics.jsonl" in caplog.text
    (rd / "metrics.jsonl").write_text('{"kind": \n' + whole)
    with pytest.raises(FedpitError, match=r"metrics.jsonl: line 1: invalid JSON"):
        RunDir(rd).read_metrics()


# ---------------------------------------------------------------------------------------------- fingerprint
@pytest.mark.parametrize(
    "edit, key",
    [
        (('algorithm = "fedpit"', 'algorithm = "fedit"'), "algorithm"),
        (("\nlr = 0.001\n", "\nlr = 0.002\n"), "train.lr"),
        (("\nr = 2\n", "\nr = 3\n"), "lora.r"),
    ],
)
def test_resume_refuses_a_config_edited_in_what_changes_the_result(runs, tmp_path, capsys, edit, key):
    rd = _copy(runs.stopped, tmp_path)
    text = (rd / "config.toml").read_text()
    assert edit[0] in text
    (rd / "config.toml").write_text(text.replace(edit[0], edit[1], 1))
    capsys.readouterr()
    assert main(["run", "--resume", str(rd), "--quiet"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "config.toml" in line and key in line and "differ" in line


def test_resume_accepts_an_edit_of_where_the_run_is_written(runs, tmp_path):
    rd = _copy(runs.stopped, tmp_path)
    text = (rd / "config.toml").read_text().replace(str(runs.stopped.parent), str(tmp_path / "elsewhere"))
    (rd / "config.toml").write_text(text)
    assert RunDir.check_resumable(rd, load_config(rd / "config.toml")) == 1


# ---------------------------------------------------------------------------------------------- run folders
def test_run_folders_are_created_atomically_and_only_generated_names_get_a_suffix(tmp_path):
    cfg = load_config(overrides=[f"output_dir={tmp_path}", "run_name=x"])
    part = {"clients": [[0]]}
    a = RunDir.start(tmp_path / "x", cfg, part, saver=None)
    with pytest.raises(ConfigError, match="already exists"):
        RunDir.start(tmp_path / "x", cfg, part, saver=None)  # an explicit name that exists stays an error
    assert RunDir.start(tmp_path / "x", cfg, part, saver=None, unique=True).path.name == "x-2"
    assert 'run_name = "x-2"' in (tmp_path / "x-2" / "config.toml").read_text()
    (tmp_path / "empty").mkdir()
    assert RunDir.start(tmp_path / "empty", cfg, part, saver=None).path == tmp_path / "empty"
    assert a.progress()["status"] == "starting"
    # many runs started together under one generated name: each gets its own folder
    got, errors = [], []

    def start():
        try:
            got.append(RunDir.start(tmp_path / "gen", cfg, part, saver=None, unique=True).path)
        except Exception as e:  # pragma: no cover - a failure is reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 8


def test_an_adapter_folder_without_a_manifest_is_still_checked(runs, tmp_path):
    """A peft folder from elsewhere (no manifest.json): a truncated file or nan/inf tensors are named, not loaded."""
    import torch

    from fedpit.adapter_folder import read_adapter_folder
    from fedpit.adapters import save_state

    d = tmp_path / "peft"
    shutil.copytree(runs.ref / "final", d)
    (d / MANIFEST).unlink()
    assert read_adapter_folder(d).peft_config["r"] == 2
    state = load_state(d / "adapter_model.safetensors")
    save_state({k: v * torch.tensor(float("nan")) for k, v in state.items()}, d / "adapter_model.safetensors")
    with pytest.raises(ConfigError, match=r"peft/adapter_model.safetensors: non-finite values"):
        read_adapter_folder(d)
    _damage(d / "adapter_model.safetensors", "truncate")
    with pytest.raises(ConfigError, match=r"peft/adapter_model.safetensors: not a readable safetensors file"):
        read_adapter_folder(d)


def test_a_run_folder_without_commit_records_is_refused_not_rolled_back(runs, tmp_path, capsys):
    """Rounds on disk without their manifests (a folder from before checksums, or all of them lost) are not
    guessed at: one line naming the missing record, every file left in place."""
    rd = _copy(runs.stopped, tmp_path)
    for m in rd.glob(f"rounds/round_*/{MANIFEST}"):
        m.unlink()
    before = {f: (rd / f).read_bytes() for f in _files(rd)}
    capsys.readouterr()
    assert main(["run", "--resume", str(rd), "--quiet"]) == 2
    assert "rounds/round_000/manifest.json: missing" in _error_line(capsys.readouterr().err)
    assert {f: (rd / f).read_bytes() for f in _files(rd)} == before
