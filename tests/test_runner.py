"""The in-process runner on the tiny model: FedIT rounds, the run folder, resume, and bad input."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fedpit.adapters import load_state, max_abs_diff, weighted_average
from fedpit.algorithms import REGISTRY
from fedpit.cli import main
from fedpit.runner import Runner, client_seed, sample_clients


def _global(run_dir, r):
    return load_state(run_dir / "rounds" / f"round_{r:03d}" / "adapter_model.safetensors")


def test_fedit_run_writes_a_complete_run_folder(tiny_cfg):
    summary = Runner(tiny_cfg, show_progress=False).run()
    rd = Path(summary["run_dir"])
    for f in (
        "config.toml",
        "partition.json",
        "metrics.jsonl",
        "progress.json",
        "summary.json",
        "final/adapter_model.safetensors",
        "final/adapter_config.json",
        "final/fedpit.json",
        "rounds/round_000/adapter_model.safetensors",
        "rounds/round_002/adapter_model.safetensors",
    ):
        assert (rd / f).is_file(), f
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in rows if r["kind"] == "client"]
    assert {(r["round"], r["client"]) for r in clients} == {(r, k) for r in (1, 2) for k in (0, 1, 2)}
    for r in clients:
        for key in ("loss", "examples", "tokens", "seconds", "bytes_sent", "bytes_received", "lr", "steps"):
            assert key in r, key
        assert r["bytes_sent"] == r["bytes_received"] > 0
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["lr"] > rounds[2]["lr"]  # cosine over rounds
    assert json.loads((rd / "progress.json").read_text())["status"] == "complete"
    part = json.loads((rd / "partition.json").read_text())
    assert sorted(i for c in part["clients"] for i in c) == list(range(160))


def test_server_aggregate_is_the_example_weighted_mean_of_uploads(tiny_cfg, monkeypatch):
    """Capture the uploads of round 1 and check the saved global adapter is their FedAvg."""
    seen = []
    original = REGISTRY["fedit"]

    def spy(global_adapter, replies):
        seen.append([(r.adapter, r.num_examples) for r in replies])
        return original.server_aggregate(global_adapter, replies)

    monkeypatch.setitem(REGISTRY, "fedit", replace(original, server_aggregate=spy))
    summary = Runner(tiny_cfg, show_progress=False).run()
    rd = Path(summary["run_dir"])
    uploads = seen[0]
    part = json.loads((rd / "partition.json").read_text())
    assert [n for _, n in uploads] == [len(c) for c in part["clients"]]
    expected = weighted_average([a for a, _ in uploads], [n for _, n in uploads])
    assert max_abs_diff(_global(rd, 1), expected) == 0.0
    assert max_abs_diff(_global(rd, 1), _global(rd, 0)) > 0


def test_resume_after_round_one_gives_the_same_final_adapter(tiny_cfg, tmp_path):
    full = Runner(tiny_cfg, show_progress=False).run()
    cfg2 = replace(tiny_cfg, output_dir=str(tmp_path / "runs2"))
    stopped = Runner(cfg2, show_progress=False).run(stop_after=1)
    assert stopped["status"] == "stopped"
    rd = Path(stopped["run_dir"])
    assert not (rd / "summary.json").exists()
    assert json.loads((rd / "progress.json").read_text())["completed_rounds"] == 1
    assert main(["run", "--resume", str(rd), "--quiet"]) == 0
    a = load_state(Path(full["run_dir"]) / "final" / "adapter_model.safetensors")
    b = load_state(rd / "final" / "adapter_model.safetensors")
    assert max_abs_diff(a, b) == 0.0
    rows = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines()]
    assert sorted((r["round"], r.get("client", -1)) for r in rows) == sorted(
        [(0, -1)] + [(r, k) for r in (1, 2) for k in (-1, 0, 1, 2)]
    )
    assert main(["run", "--resume", str(rd)]) == 2  # complete runs are not resumed twice


def test_client_sampling_is_seeded_and_respects_fraction():
    a = sample_clients(1, 3, 10, 0.3, 1)
    assert a == sample_clients(1, 3, 10, 0.3, 1) and len(a) == 3 and a == sorted(set(a))
    assert any(sample_clients(1, r, 10, 0.3, 1) != a for r in range(4, 9))
    assert len(sample_clients(1, 1, 10, 0.01, 2)) == 2
    assert client_seed(1, 2, 3) == client_seed(1, 2, 3) != client_seed(1, 2, 4)


def test_partial_participation_keeps_unsampled_clients_out(tiny_cfg):
    cfg = replace(tiny_cfg, federation=replace(tiny_cfg.federation, fraction=0.34, rounds=1))
    summary = Runner(cfg, show_progress=False).run()
    rows = [json.loads(x) for x in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if r["kind"] == "client"]) == 1


# ---------------------------------------------------------------------------------------------- bad input, CLI


def _run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "content, needle",
    [
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', "record 2: field 'output'"),
        ('{"instruction": "a"', "invalid JSON"),
        ('[{"instruction": 5, "output": "b"}]', "record 1: field 'instruction'"),
    ],
)
def test_bad_data_exits_2_with_one_line_and_no_run_folder(tmp_path, capsys, content, needle, tiny_model_path):
    f = tmp_path / "d.json"
    f.write_text(content)
    out = tmp_path / "runs"
    code, err = _run_cli(
        capsys,
        "run",
        "--set",
        f"data.train={f}",
        "--set",
        f"output_dir={out}",
        "--set",
        f"model.name={tiny_model_path}",
        "--quiet",
    )
    assert code == 2
    assert len(err) == 1 and err[0].startswith("fedpit: error:") and "d.json" in err[0] and needle in err[0]
    assert not out.exists()


def test_missing_file_too_small_dataset_and_bad_config(tmp_path, capsys, tiny_model_path):
    out = tmp_path / "runs"
    code, err = _run_cli(capsys, "run", "--set", f"data.train={tmp_path / 'nope.jsonl'}", "--set", f"output_dir={out}")
    assert code == 2 and "nope.jsonl" in err[0] and "not found" in err[0]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(5)))
    code, err = _run_cli(
        capsys,
        "run",
        "--set",
        f"data.train={small}",
        "--set",
        "partition.num_clients=3",
        "--set",
        "partition.min_per_client=2",
        "--set",
        f"output_dir={out}",
    )
    assert code == 2 and "small.jsonl" in err[0] and "3 clients" in err[0]
    code, err = _run_cli(capsys, "run", "--set", "federation.rounds=0")
    assert code == 2 and err == ["fedpit: error: federation.rounds: must be >= 1"]
    code, err = _run_cli(capsys, "run", "--set", "nonsense=1")
    assert code == 2 and "valid keys" in err[0]
    code, err = _run_cli(capsys, "run", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "none.toml" in err[0]
    assert not out.exists()


def test_model_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = _run_cli(
        capsys, "run", "--set", f"model.name={tmp_path / 'empty'}", "--set", f"output_dir={tmp_path / 'runs'}"
    )
    assert code == 2 and "config.json" in err[0]
    code, err = _run_cli(
        capsys, "run", "--set", "model.name=no-such-org/no-such-model", "--set", f"output_dir={tmp_path / 'runs'}"
    )
    assert code == 2 and "no-such-org/no-such-model" in err[0]
    assert not (tmp_path / "runs").exists()


def test_partition_command_prints_counts_per_label(capsys):
    assert main(["partition", "--set", "partition.alpha=0.1"]) == 0
    out = capsys.readouterr().out
    assert "160 examples" in out and "medication" in out and "total" in out and "client 2" in out


def test_chat_with_a_trained_adapter(tiny_cfg, capsys):
    summary = Runner(tiny_cfg, show_progress=False).run()
    from fedpit.generate import answer, load_for_inference

    assert (
        main(
            [
                "chat",
                "--adapter",
                summary["final_adapter"],
                "--prompt",
                "Explain gout.",
                "--max-new-tokens",
                "5",
                "--repetition-penalty",
                "1.0",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    model, tok, template = load_for_inference(summary["final_adapter"])  # the trained adapter, greedy decoding
    want = answer(model, tok, "Explain gout.", template=template, max_new_tokens=5, repetition_penalty=1.0)
    assert printed == want + "\n" and template == "alpaca"
    code, err = _run_cli(capsys, "chat", "--adapter", str(tiny_cfg.output_dir), "--prompt", "x")
    assert code == 2 and "not an adapter folder" in err[0]
