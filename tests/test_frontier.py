"""The privacy-utility frontier (``fedpit frontier`` and its report section) and ``fedpit report --benchmarks``."""

import json
import struct
from dataclasses import replace

import pytest

from fedpit.cli import main
from fedpit.compare import EvalOptions, frontier_grid, run_experiment
from fedpit.errors import ConfigError
from fedpit.report import frontier_rows, noise_points, write_report


def _rec(algo, seed, model="shared", setting="", **metrics):
    return {"algorithm": algo, "seed": seed, "setting": setting, "model": model, **metrics}


def _frontier_results(tmp_path):
    """Three seeds; each run's floor differs by seed, so leakage above it must be taken row by row."""
    recs = []
    for seed, floor in ((1, 0.10), (2, 0.12), (3, 0.14)):
        d = (seed - 2) * 0.01  # -0.01, 0, +0.01 around each mean
        recs += [
            _rec("fedit", seed, rouge_l=0.17 + d, cosine=0.60, reference_loss=2.70, leak_rouge_l=floor + 0.04 + d),
            _rec("fedpit", seed, rouge_l=0.12, cosine=0.50, reference_loss=3.00, leak_rouge_l=floor + 0.00),
            _rec("fedpit", seed, "private", rouge_l=0.16, cosine=0.58, reference_loss=2.75, leak_rouge_l=floor + 0.02),
            _rec("fedpit-mix", seed, setting="fedpit.beta=0.5", rouge_l=0.15, cosine=0.55, reference_loss=2.80)
            | {"leak_rouge_l": floor + 0.05},  # worse than fedit on both axes: off the front
            _rec("backbone", seed, "bare", rouge_l=0.11, cosine=0.52, reference_loss=3.10, leak_rouge_l=floor),
            _rec("locit", seed, "private", rouge_l=0.165, cosine=0.59, reference_loss=2.72),  # no leakage measured
        ]
    for r in recs:
        if "leak_rouge_l" in r:
            r["leak_floor_rouge_l"] = {1: 0.10, 2: 0.12, 3: 0.14}[r["seed"]]
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"meta": {"name": "fr", "command": "fedpit frontier"}, "records": recs, "curves": []}))
    return f


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_frontier_report_from_a_small_results_file(tmp_path):
    files = write_report(_frontier_results(tmp_path))
    md = files["md"].read_text()
    section = md[md.index("## Privacy-utility frontier") :]
    # leakage above floor per row, then mean ± sample std over seeds; fedit: 0.04 + (-0.01, 0, 0.01)
    all3 = " | loss, Rouge-L, cosine |"
    assert "| fedit shared | 3 | 0.040 ± 0.010 | 2.700 ± 0.000 | 0.170 ± 0.010 | 0.600 ± 0.000" + all3 in section
    # as little leakage as the backbone, better loss and Rouge-L, worse cosine: the backbone stays on that front only
    assert (
        "| fedpit shared | 3 | 0.000 ± 0.000 | 3.000 ± 0.000 | 0.120 ± 0.000 | 0.500 ± 0.000 | loss, Rouge-L |"
        in section
    )
    assert "| fedpit private | 3 | 0.020 ± 0.000 | 2.750 ± 0.000 | 0.160 ± 0.000 | 0.580 ± 0.000" + all3 in section
    assert "| fedpit-mix β=0.5 shared | 3 | 0.050 ± 0.000 |" in section and section.count("| - |") == 1
    assert "| bare backbone | 3 | 0.000 ± 0.000 | 3.100 ± 0.000 | 0.110 ± 0.000 | 0.520 ± 0.000 | cosine |" in section
    assert "locit" not in section  # no leakage measured: not a point
    order = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ") and " | 3 | " in line]
    assert order == ["| fedit shared", "| fedpit shared", "| fedpit private", "| fedpit-mix β=0.5 shared"] + [
        "| bare backbone"
    ]
    # against FedIT, in the terms: leakage excess x FedIT's, share of the backbone -> FedIT loss gap closed
    assert "| fedit shared | 1.00 | 100% | 100.0% | 100.0% |" in section
    assert "| fedpit shared | 0.00 | 25% | 70.6% | 83.3% |" in section
    assert "| fedpit-mix β=0.5 shared | 1.25 | 75% | 88.2% | 91.7% |" in section
    assert "| bare backbone | 0.00 | 0% | 64.7% | 86.7% |" in section
    assert "![privacy-utility frontier](frontier.png)" in section
    width, height = _png_size(tmp_path / "frontier.png")
    assert width > 2.5 * height  # three panels side by side
    assert files["frontier.png"] == tmp_path / "frontier.png"
    assert "<h2>Privacy-utility frontier</h2>" in files["html"].read_text()


def test_pareto_front_per_measure():
    recs = [
        _rec("a", 1, rouge_l=0.2, reference_loss=2.0, leak_rouge_l=0.3, leak_floor_rouge_l=0.1),
        _rec("b", 1, rouge_l=0.1, reference_loss=3.0, leak_rouge_l=0.1, leak_floor_rouge_l=0.1),
        _rec("c", 1, rouge_l=0.1, reference_loss=2.5, leak_rouge_l=0.2, leak_floor_rouge_l=0.1),  # Rouge-L tie with b
    ]
    front = {r["algorithm"]: r["frontier"] for r in frontier_rows(recs)}
    assert front == {"a": ["reference_loss", "rouge_l"], "b": ["reference_loss", "rouge_l"], "c": ["reference_loss"]}


def test_no_frontier_section_without_leakage(tmp_path):
    f = tmp_path / "results.json"
    f.write_text(json.dumps({"records": [_rec("fedit", 1, rouge_l=0.2), _rec("fedpit", 1, rouge_l=0.1)]}))
    md = write_report(f)["md"].read_text()
    assert "Privacy-utility" not in md and not (tmp_path / "frontier.png").exists()


def test_frontier_grid_expands_methods_betas_and_seeds(tiny_cfg):
    cfg = replace(tiny_cfg, eval=replace(tiny_cfg.eval, extraction_every_round=True))
    methods = ["fedit", "fedpit", "fedpit-mix", "fedmit", "locit", "cenit"]
    cells = frontier_grid(cfg, methods, [1, 2, 3])
    assert len(cells) == 3 * (5 + 5) and len({c.run_name for _, c in cells}) == 30
    first_seed = [(c.algorithm, label, c.fedpit.beta) for label, c in cells[:10]]
    assert [c.seed for _, c in cells] == [1] * 10 + [2] * 10 + [3] * 10  # whole seeds first
    assert first_seed[:5] == [(m, "", cfg.fedpit.beta) for m in methods if m != "fedpit-mix"]
    assert first_seed[5:] == [("fedpit-mix", f"fedpit.beta={b}", float(b)) for b in ("0", "0.25", "0.5", "0.75", "1")]
    assert frontier_grid(cfg, ["fedpit-mix"], [7], "0.2")[0][1].fedpit.beta == 0.2
    with pytest.raises(ConfigError, match="extraction"):
        frontier_grid(tiny_cfg, ["fedit"], [1])
    with pytest.raises(ConfigError, match="fedpit.beta"):
        frontier_grid(cfg, ["fedpit-mix"], [1], "0.5,2")
    with pytest.raises(ConfigError, match="more than once"):
        frontier_grid(cfg, ["fedpit-mix", "fedpit-mix"], [1])


def test_frontier_cli_turns_the_attack_on_and_adds_the_backbone(tmp_path, monkeypatch, capsys):
    import fedpit.compare

    seen = {}

    def fake(cells, out, ev, **kw):
        seen.update(cells=cells, **kw)
        return out / "results.json"

    monkeypatch.setattr(fedpit.compare, "run_experiment", fake)
    argv = ["frontier", "--algorithms", "fedit,fedpit-mix", "--betas", "0,1", "--seeds", "1,2", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert seen["backbone"] is True and seen["command"].startswith("fedpit frontier")
    cells = [(c.algorithm, c.seed, c.fedpit.beta if label else None) for label, c in seen["cells"]]
    assert cells == [("fedit", 1, None), ("fedpit-mix", 1, 0.0), ("fedpit-mix", 1, 1.0)] + [
        ("fedit", 2, None),
        ("fedpit-mix", 2, 0.0),
        ("fedpit-mix", 2, 1.0),
    ]
    assert all(c.eval.extraction_every_round for _, c in seen["cells"])
    assert main(["frontier", "--set", "eval.extraction_every_round=false", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.extraction_every_round" in err


def test_frontier_one_round_on_the_tiny_model(tiny_cfg, tmp_path):
    cfg = replace(
        tiny_cfg,
        federation=replace(tiny_cfg.federation, rounds=1),
        eval=replace(tiny_cfg.eval, extraction_every_round=True, extraction_n=2, extraction_max_new_tokens=3),
    )
    cells = frontier_grid(cfg, ["fedit", "fedpit-mix"], [1], "0")
    out = tmp_path / "exp"
    ev = EvalOptions(limit=2, max_new_tokens=3)
    data = json.loads(run_experiment(cells, out, ev, command="fedpit frontier", backbone=True).read_text())
    kinds = [(r["algorithm"], r["model"], r["setting"]) for r in data["records"]]
    assert kinds == [("fedit", "shared", ""), ("fedpit-mix", "shared", "fedpit.beta=0"), ("backbone", "bare", "")]
    fedit, _, bare = data["records"]
    floor = json.loads((out / "runs" / "fedit-s1" / "summary.json").read_text())["extraction"]["backbone"]["rouge_l"]
    assert bare["leak_rouge_l"] == bare["leak_floor_rouge_l"] == fedit["leak_floor_rouge_l"] == floor
    assert bare["n_test"] == 2 and {"rouge_l", "cosine", "reference_loss"} <= set(bare)
    answers = out / "backbone" / "eval" / "answers.jsonl"
    assert answers.is_file()
    md = (out / "report.md").read_text()
    assert "## Privacy-utility frontier" in md and "| bare backbone | 1 | 0.000 |" in md
    assert _png_size(out / "frontier.png")[0] > 0
    stamp = answers.stat().st_mtime_ns
    again = json.loads(run_experiment(cells, out, ev, backbone=True).read_text())
    assert answers.stat().st_mtime_ns == stamp and again["records"] == data["records"]  # reused, not re-answered


# ---------------------------------------------------------------------------------------------------------------
# fedpit report --benchmarks


def _score(acc, n, norm=None, **kw):
    return (
        {"acc": acc, "acc_stderr": 0.02, "n": n, "seconds": 1.0, "cached": False}
        | ({"acc_norm": norm} if norm is not None else {})
        | kw
    )


def _bench_results(folder):
    """The shape fedpit.mcq.evaluate_models writes (see tests/test_mcq.py)."""
    res = {
        "protocol": "lm-eval",
        "label": "lm-evaluation-harness, log-likelihood multiple choice, zero-shot",
        "model": "/models/SmolLM2-135M",
        "dtype": "bfloat16",
        "limit": 0,
        "batch_size": 8,
        "benchmarks": {
            "pubmedqa": {"chance": 1 / 3, "majority": 0.552, "majority_class": "yes", "n": 500, "note": "test"},
            "medqa": {"chance": 0.25, "majority": 0.277, "majority_class": "A", "n": 1273, "note": "USMLE"},
        },
        "models": {
            "backbone": {
                "adapters": [None],
                "scores": {"pubmedqa": _score(0.432, 500, 0.564), "medqa": _score(0.277, 1273)},
            },
            "fedit shared": {
                "adapters": ["r/final"],
                "scores": {"pubmedqa": _score(0.45, 500), "medqa": _score(0.3, 1273)},
            },
            "fedpit private": {
                "adapters": ["c0", "c1", "c2"],
                "scores": {
                    "pubmedqa": _score(0.44, 500, adapters=3, per_adapter_acc=[0.43, 0.44, 0.45]),
                    "medqa": _score(0.26, 1273, adapters=3, per_adapter_acc=[0.25, 0.26, 0.27]),
                },
            },
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(res))
    return res


def test_noise_threshold_comes_from_n():
    assert noise_points(500) == pytest.approx(4.38, abs=0.01)  # "about 4 points" at n = 500
    assert noise_points(100) == pytest.approx(9.80, abs=0.01)
    assert noise_points(2000) == pytest.approx(noise_points(500) / 2)


def test_report_benchmarks_of_an_experiment(tmp_path, capsys):
    exp = tmp_path / "exp"
    _bench_results(exp / "benchmarks")
    (exp / "results.json").write_text(json.dumps({"records": [_rec("fedit", 1, rouge_l=0.2)]}))
    assert main(["report", str(exp), "--benchmarks"]) == 0
    assert (exp / "report.md").read_text() == write_report(exp)["md"].read_text()  # found without asking, too
    md = (exp / "report.md").read_text()
    assert "| fedit | shared | 1 | 0.200 |" in md  # the experiment's own table stays
    sec = md[md.index("## Multiple-choice benchmarks") :]
    assert "Protocol: lm-evaluation-harness, log-likelihood multiple choice, zero-shot." in sec
    pubmed = sec[sec.index("### pubmedqa (n = 500)") : sec.index("### medqa")]
    assert "| chance | 33.3 | - | - | 500 |" in pubmed
    assert "| majority class (yes) | 55.2 | - | - | 500 |" in pubmed
    assert "| backbone (untuned) | 43.2 | [38.9, 47.6] | 56.4 | 500 |" in pubmed  # Wilson interval, as in the README
    assert "| fedit shared | 45.0 | [40.7, 49.4] | - | 500 |" in pubmed
    assert "| fedpit private (mean of 3 adapters: 43.0 / 44.0 / 45.0) | 44.0 |" in pubmed
    assert "With n = 500, a difference below 4.4 points is noise" in pubmed
    medqa = sec[sec.index("### medqa (n = 1273)") :]
    assert "| majority class (A) | 27.7 |" in medqa and "below 2.7 points is noise" in medqa
    assert "CareQA" in sec
    assert "<h3>pubmedqa (n = 500)</h3>" in (exp / "report.html").read_text()
    assert main(["report", str(exp / "results.json"), "--benchmarks", "medqa"]) == 0
    md = (exp / "report.md").read_text()
    assert "### medqa" in md and "### pubmedqa" not in md


def test_report_benchmarks_of_an_evaluate_folder(tmp_path, capsys):
    folder = tmp_path / "eval-benchmarks"
    _bench_results(folder)
    assert main(["report", str(folder), "--benchmarks"]) == 0
    md = (folder / "report.md").read_text()
    assert md.startswith("# fedpit report: eval-benchmarks") and "### pubmedqa (n = 500)" in md
    assert "Privacy-utility" not in md and "| method |" not in md
    assert main(["report", str(folder)]) == 2  # no records: says how to report it
    assert "--benchmarks" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda r: r["models"]["fedit shared"]["scores"]["medqa"].update(acc=1.5),
            "model fedit shared, medqa: field 'acc'",
        ),
        (lambda r: r["benchmarks"]["pubmedqa"].pop("n"), "benchmark pubmedqa: field 'n'"),
        (lambda r: r.update(models=[]), "field 'models'"),
    ],
)
def test_bad_benchmark_results_are_one_line_exit_2(tmp_path, capsys, change, expected):
    folder = tmp_path / "b"
    res = _bench_results(folder)
    change(res)
    (folder / "results.json").write_text(json.dumps(res))
    assert main(["report", str(folder), "--benchmarks"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(folder / "results.json") in err
    assert not (folder / "report.md").exists()


def test_report_benchmarks_missing_or_unknown(tmp_path, capsys):
    exp = tmp_path / "exp"
    (exp).mkdir()
    (exp / "results.json").write_text(json.dumps({"records": [_rec("fedit", 1, rouge_l=0.2)]}))
    assert main(["report", str(exp)]) == 0
    assert "benchmarks" not in (exp / "report.md").read_text()  # none saved: no section
    assert main(["report", str(exp), "--benchmarks"]) == 2  # asked for: an error
    assert "no benchmark results here" in capsys.readouterr().err
    _bench_results(exp / "benchmarks")
    assert main(["report", str(exp), "--benchmarks", "medmcqa"]) == 2
    assert "medmcqa not evaluated here (saved: pubmedqa, medqa)" in capsys.readouterr().err
    assert main(["report", str(exp), "--benchmarks", "careqa"]) == 2
    assert "careqa" in capsys.readouterr().err
