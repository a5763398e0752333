"""compare / sweep / report: the experiment suite on the tiny model, and report generation from a results file."""

import json
from dataclasses import replace

import pytest

from fedpit.cli import main
from fedpit.compare import EvalOptions, grid, run_experiment
from fedpit.errors import ConfigError
from fedpit.report import aggregate, markdown_table, write_report


def _results(tmp_path):
    recs = []
    for seed, (a, b) in enumerate([(0.20, 0.10), (0.30, 0.20), (0.40, 0.30)], 1):
        recs.append(
            {
                "algorithm": "fedpit",
                "seed": seed,
                "setting": "",
                "model": "shared",
                "rouge_l": a,
                "leak_rouge_l": 0.1,
                "judge_wt": 60.0 + seed,
            }
        )
        recs.append(
            {"algorithm": "fedit", "seed": seed, "setting": "", "model": "shared", "rouge_l": b, "leak_rouge_l": 0.3}
        )
    curves = [
        {
            "algorithm": "fedit",
            "seed": 1,
            "setting": "",
            "train_loss": [2.0, 1.5],
            "test_loss": [3.0, 2.5, 2.2],
            "leak_rouge_l": [0.2, 0.3],
        }
    ]
    f = tmp_path / "results.json"
    f.write_text(
        json.dumps(
            {"meta": {"name": "t", "command": "fedpit compare --seeds 1,2,3"}, "records": recs, "curves": curves}
        )
    )
    return f


def test_aggregate_mean_and_sample_std_over_seeds(tmp_path):
    rows = {r["algorithm"]: r for r in aggregate(json.loads(_results(tmp_path).read_text())["records"])}
    assert rows["fedpit"]["rouge_l"] == pytest.approx(0.30) and rows["fedpit"]["rouge_l_std"] == pytest.approx(0.10)
    assert rows["fedpit"]["judge_wt"] == pytest.approx(62.0) and "judge_wt" not in rows["fedit"]
    assert rows["fedit"]["seeds"] == [1, 2, 3]
    table = markdown_table(list(rows.values()))
    assert "| fedpit | shared | 3 | 0.300 ± 0.100 |" in table and "judge WT %" in table


def test_report_files_from_a_small_results_file(tmp_path):
    files = write_report(_results(tmp_path))
    md = files["md"].read_text()
    assert "fedpit compare --seeds 1,2,3" in md and "0.300 ± 0.100" in md and "![" in md
    html = files["html"].read_text()
    assert "<table>" in html and "fedpit" in html
    for name in ("score.png", "leakage.png", "train_loss.png", "test_loss.png", "judge_wt.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 1000, name
    assert main(["report", str(tmp_path / "results.json")]) == 0


def test_sweep_grid_sets_each_value_and_validates(tiny_cfg):
    cells = grid(tiny_cfg, ["fedit", "fedpit"], [1, 2], "partition.alpha=0.1,10")
    assert len(cells) == 8
    assert sorted({(label, c.partition.alpha) for label, c in cells}) == [
        ("partition.alpha=0.1", 0.1),
        ("partition.alpha=10", 10.0),
    ]
    assert len({c.run_name for _, c in cells}) == 8
    with pytest.raises(ConfigError, match="partition.alpha"):
        grid(tiny_cfg, ["fedit"], [1], "partition.alpha=0,1")
    with pytest.raises(ConfigError, match="algorithm"):
        grid(tiny_cfg, ["nope"], [1])


def test_compare_one_round_on_the_tiny_model(tiny_cfg, tmp_path):
    cfg = replace(
        tiny_cfg,
        federation=replace(tiny_cfg.federation, rounds=1),
        eval=replace(tiny_cfg.eval, extraction_every_round=True, extraction_n=2, extraction_max_new_tokens=3),
    )
    cells = grid(cfg, ["fedit", "locit"], [1])
    out = tmp_path / "exp"
    results = run_experiment(cells, out, EvalOptions(limit=2, max_new_tokens=3), command="fedpit compare --seeds 1")
    data = json.loads(results.read_text())
    assert data["meta"]["command"] == "fedpit compare --seeds 1"  # as given, e.g. by a benchmark script
    kinds = {(r["algorithm"], r["model"]) for r in data["records"]}
    assert kinds == {("fedit", "shared"), ("locit", "private")}
    fedit = next(r for r in data["records"] if r["algorithm"] == "fedit")
    assert fedit["n_test"] == 2 and {"rouge_l", "cosine", "reference_loss", "leak_rouge_l"} <= set(fedit)
    locit = next(r for r in data["records"] if r["algorithm"] == "locit")
    ext = json.loads((out / "runs" / "locit-s1" / "summary.json").read_text())["extraction"]
    private = [v["rouge_l"] for k, v in ext.items() if k.startswith("private_client_")]
    assert locit["leak_rouge_l"] == pytest.approx(sum(private) / len(private))  # what stays home, attacked
    assert locit["leak_floor_rouge_l"] == ext["backbone"]["rouge_l"]
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    assert len(data["curves"]) == 2
    before = (out / "runs" / "fedit-s1" / "summary.json").stat().st_mtime
    answers = out / "runs" / "fedit-s1" / "final" / "eval" / "answers.jsonl"
    answered = answers.stat().st_mtime_ns
    again = json.loads(run_experiment(cells, out, EvalOptions(limit=2, max_new_tokens=3)).read_text())
    assert (out / "runs" / "fedit-s1" / "summary.json").stat().st_mtime == before  # complete runs are not re-trained
    assert answers.stat().st_mtime_ns == answered  # ... nor re-evaluated with the same settings
    assert again["records"] == data["records"]
    third = json.loads(run_experiment(cells, out, EvalOptions(limit=1, max_new_tokens=3)).read_text())
    assert answers.stat().st_mtime_ns != answered  # other settings: evaluated again
    assert {r["n_test"] for r in third["records"]} == {1}


def test_compare_cli_rejects_bad_seeds(capsys):
    assert main(["compare", "--seeds", "a,b"]) == 2
    assert "--seeds" in capsys.readouterr().err
