"""Medical multiple-choice benchmarks (fedpit.mcq): data conversion, parity with lm-evaluation-harness, the cache,
the FlowerTune-style protocol and the CLI's one-line data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpit.cli import main
from fedpit.errors import DataError
from fedpit.mcq import evaluate_models, format_table
from fedpit.mcq.data import BENCHMARKS, prepare, pubmedqa_records
from fedpit.mcq.flowertune import WRAPPER, build_prompt, parse_answer

REAL = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_REAL = all((REAL / f).is_file() for b in BENCHMARKS.values() for f in b.files)


def write_bench_data(root: Path, n: int = 6) -> Path:
    """A small folder laid out as shared/data: PQA-L with more items than the test split, MedQA and MedMCQA."""
    (root / "pubmedqa").mkdir(parents=True)
    labels = ["yes", "no", "maybe"]
    ori = {
        str(1000 + i): {
            "QUESTION": f"Does treatment {i} reduce mortality?",
            "CONTEXTS": [f"We studied {10 * i} patients.", f"Outcome {i} was measured."],
            "LABELS": ["METHODS", "RESULTS"],
            "final_decision": labels[i % 3],
            "LONG_ANSWER": "It depends.",
        }
        for i in range(2 * n)
    }
    gt = {str(1000 + i): labels[i % 3] for i in range(1, 2 * n, 2)}  # every second PMID: not a positional split
    (root / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(ori))
    (root / "pubmedqa" / "test_ground_truth.json").write_text(json.dumps(gt))
    for name in ("medqa", "medmcqa"):
        d = root / "medagents-benchmark" / name
        d.mkdir(parents=True)
        rows = [
            {
                "realidx": i,
                "question": f"Which drug treats condition {i}?",
                "options": {L: f"drug {L.lower()}{i}" for L in "ABCD"},
                "answer_idx": "ABCD"[i % 4],
            }
            for i in range(n)
        ]
        (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def bench_data(tmp_path):
    return write_bench_data(tmp_path / "data")


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_path, tmp_path_factory):
    """A real fedpit run's final adapter on the tiny model (1 round of FedIT)."""
    from fedpit.config import load_config
    from fedpit.runner import Runner

    out = tmp_path_factory.mktemp("mcq-runs")
    cfg = load_config(
        overrides=[
            "algorithm=fedit",
            f"model.name={tiny_model_path}",
            "model.dtype=fp32",
            "model.max_seq_len=128",
            f"output_dir={out}",
            "run_name=m",
            "federation.rounds=1",
            "train.local_steps=2",
            "train.batch_size=2",
            "eval.max_examples=4",
            "lora.r=4",
            "lora.alpha=8",
            "train.lr=0.05",
        ]
    )
    return Runner(cfg, show_progress=False).run()["final_adapter"]


# ------------------------------------------------------------------------------------------------- data
def test_pubmedqa_selects_the_test_pmids_not_a_positional_split(bench_data):
    gt_file = bench_data / "pubmedqa" / "test_ground_truth.json"
    gt = json.loads(gt_file.read_text())
    gt = dict(sorted(gt.items(), key=lambda kv: kv[1], reverse=True))  # sorted by label, as the real file is
    gt_file.write_text(json.dumps(gt))
    recs = pubmedqa_records(bench_data)
    assert [r["pubid"] for r in recs] == ["1001", "1003", "1005", "1007", "1009", "1011"]  # ori_pqal.json's order
    assert [r["final_decision"] for r in recs] == [gt[r["pubid"]] for r in recs] == ["no", "yes", "maybe"] * 2
    assert recs[0]["CONTEXTS"] == ["We studied 10 patients.", "Outcome 1 was measured."]


@pytest.mark.skipif(not HAS_REAL, reason="shared benchmark data not present")
def test_real_sets_have_the_published_sizes(tmp_path):
    recs = pubmedqa_records(REAL)
    gt = json.loads((REAL / "pubmedqa" / "test_ground_truth.json").read_text())
    ori = json.loads((REAL / "pubmedqa" / "ori_pqal.json").read_text())
    assert len(recs) == 500 and {r["pubid"] for r in recs} == set(gt)
    assert {r["final_decision"] for r in recs[:30]} == {"yes", "no", "maybe"}  # --limit 30 is not all "yes"
    assert {r["pubid"] for r in recs} != set(list(ori)[:500]) and {r["pubid"] for r in recs} != set(list(ori)[500:])
    assert len(prepare("medqa", REAL, str(tmp_path))[1]) == 1273
    assert len(prepare("medmcqa", REAL, str(tmp_path))[1]) == 2816


def test_conversion_uses_the_hub_datasets_fields(bench_data, tmp_path):
    path, recs = prepare("medqa", bench_data, str(tmp_path))
    row = json.loads(path.read_text().splitlines()[2])
    assert row == {
        "id": "2",
        "sent1": "Which drug treats condition 2?",
        "ending0": "drug a2",
        "ending1": "drug b2",
        "ending2": "drug c2",
        "ending3": "drug d2",
        "label": 2,
    }
    _, recs = prepare("medmcqa", bench_data, str(tmp_path))
    assert recs[3]["opd"] == "drug d3" and recs[3]["cop"] == 3


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda d: (d / "medagents-benchmark/medqa/test.jsonl").unlink(), "medqa/test.jsonl: missing"),
        (
            lambda d: (d / "medagents-benchmark/medqa/test.jsonl").write_text('{"question": "q"}\n'),
            "medqa/test.jsonl: line 1: field 'options'",
        ),
        (
            lambda d: (d / "medagents-benchmark/medqa/test.jsonl").write_text(
                '{"question": "q", "options": {"A": "1", "B": "2", "C": "3", "D": "4"}, "answer_idx": "A"}\n{oops\n'
            ),
            "medqa/test.jsonl: line 2: not valid JSON",
        ),
        (
            lambda d: (d / "medagents-benchmark/medqa/test.jsonl").write_text(
                '{"question": "q", "options": {"A": "1", "B": "2", "C": "3", "D": "4"}, "answer_idx": "E"}\n'
            ),
            "field 'answer_idx': 'E' is not one of A, B, C, D",
        ),
    ],
)
def test_bad_medqa_file_is_one_line_exit_2(bench_data, tmp_path, capsys, monkeypatch, breakage, expected):
    monkeypatch.setenv("FEDPIT_CACHE_DIR", str(tmp_path / "cache"))
    breakage(bench_data)
    code = main(
        ["evaluate", "--benchmarks", "medqa", "--benchmark-data", str(bench_data), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_pubmedqa_errors_name_the_file_and_pmid(bench_data):
    gt_file = bench_data / "pubmedqa" / "test_ground_truth.json"
    gt = json.loads(gt_file.read_text())
    gt["999"] = "yes"
    gt_file.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=r"ori_pqal.json: no record for test PMID 999"):
        pubmedqa_records(bench_data)
    gt.pop("999")
    gt["1001"] = "maybe"  # disagrees with ori_pqal's final_decision ("no")
    gt_file.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=r"ori_pqal.json: PMID 1001: field 'final_decision': 'no' disagrees"):
        pubmedqa_records(bench_data)
    gt_file.write_text("{not json")
    with pytest.raises(DataError, match=r"test_ground_truth.json: not valid JSON"):
        pubmedqa_records(bench_data)


def test_unknown_benchmark_and_missing_data_folder(tmp_path, capsys):
    assert main(["evaluate", "--benchmarks", "pubmedqa,careqa"]) == 2
    assert "unknown 'careqa'" in capsys.readouterr().err
    assert main(["evaluate", "--benchmarks", "medqa", "--benchmark-data", str(tmp_path / "nope")]) == 2
    assert "nope: not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- lm-eval parity
def lm_eval_direct(model_path, adapter, data_dir, cache, limit):
    """lm-eval's own pubmedqa / medqa_4options / medmcqa task YAMLs, pointed at the same converted files."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    own = {"pubmedqa": "pubmedqa/pubmedqa.yaml", "medqa": "medqa/medqa.yaml", "medmcqa": "medmcqa/medmcqa.yaml"}
    cfgs = {}
    for name, rel in own.items():
        cfg = load_yaml(tasks_dir / rel)
        cfg.update(
            dataset_path="json",
            dataset_name=None,
            training_split=None,
            validation_split=None,
            test_split="test",
            dataset_kwargs={"data_files": {"test": str(prepare(name, data_dir, cache)[0])}},
        )
        cfgs[cfg["task"]] = (name, cfg)
    args = {"pretrained": model_path, "dtype": "float32"} | ({"peft": str(adapter)} if adapter else {})
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        tasks=[c for _, c in cfgs.values()],
        task_manager=TaskManager(include_defaults=False),
        batch_size=4,
        device="cpu",
        limit=limit,
        log_samples=True,
    )
    return {
        name: (out["results"][task], [[float(r[0]) for r in s["filtered_resps"]] for s in out["samples"][task]])
        for task, (name, _) in cfgs.items()
    }


def test_parity_with_lm_eval_backbone_and_trained_adapter(tiny_model_path, trained_adapter, tmp_path):
    data = REAL if HAS_REAL else write_bench_data(tmp_path / "data", n=8)
    cache = str(tmp_path / "cache")
    res = evaluate_models(
        "pubmedqa,medqa,medmcqa",
        [("fedit", trained_adapter)],
        model=tiny_model_path,
        data_dir=str(data),
        limit=8,
        dtype="fp32",
        batch_size=4,
        out=tmp_path / "out",
        cache_dir=cache,
        progress=False,
    )
    lls = {}
    for label, adapter in (("backbone", None), ("fedit", trained_adapter)):
        direct = lm_eval_direct(tiny_model_path, adapter, str(data), cache, 8)
        for name, (metrics, item_lls) in direct.items():
            ours = res["models"][label]["scores"][name]
            assert ours["n"] == 8
            assert ours["acc"] == metrics["acc,none"], (label, name)
            assert ours["acc_stderr"] == metrics["acc_stderr,none"]
            if "acc_norm,none" in metrics:
                assert ours["acc_norm"] == metrics["acc_norm,none"]
            rows = [
                json.loads(x) for x in (tmp_path / "out" / "samples" / label / f"{name}.jsonl").read_text().splitlines()
            ]
            assert [r["loglikelihoods"] for r in rows] == item_lls  # the very same per-item scores
            lls[(label, name)] = item_lls
    # the adapter really was applied: its log-likelihoods differ from the bare backbone's
    assert lls[("fedit", "medqa")] != lls[("backbone", "medqa")]
    table = format_table(res)
    assert "| chance |" in table and "| majority class |" in table and "| backbone |" in table and "| fedit |" in table


def test_rerun_reuses_cached_items(tiny_model_path, bench_data, tmp_path, monkeypatch):
    kw = {
        "model": tiny_model_path,
        "data_dir": str(bench_data),
        "limit": 3,
        "dtype": "fp32",
        "batch_size": 4,
        "cache_dir": str(tmp_path / "cache"),
        "progress": False,
    }
    first = evaluate_models("medqa,medmcqa", out=tmp_path / "a", **kw)
    assert not first["models"]["backbone"]["scores"]["medqa"]["cached"]

    def boom(*a, **k):
        raise AssertionError("re-ran a cached evaluation")

    monkeypatch.setattr("fedpit.mcq.harness.run_lm_eval", boom)
    again = evaluate_models("medqa,medmcqa", out=tmp_path / "b", **kw)
    for n in ("medqa", "medmcqa"):
        s1, s2 = first["models"]["backbone"]["scores"][n], again["models"]["backbone"]["scores"][n]
        assert s2["cached"] and s1["acc"] == s2["acc"] and s1["acc_norm"] == s2["acc_norm"]
    assert (tmp_path / "b" / "samples" / "backbone" / "medqa.jsonl").read_text() == (
        tmp_path / "a" / "samples" / "backbone" / "medqa.jsonl"
    ).read_text()
    with pytest.raises(AssertionError, match="re-ran"):  # another limit is another key
        evaluate_models("medqa", **(kw | {"limit": 2}))


# ------------------------------------------------------------------------------------------------- flowertune-style
@pytest.mark.parametrize(
    "name, output, expected",
    [
        ("medqa", " B. Metformin", "B"),
        ("medqa", "(c) because", "C"),
        ("medqa", "**D**", "D"),
        ("medqa", "a", "A"),
        ("medqa", "E", None),
        ("medqa", "  ...  ", None),
        ("medqa", "The answer is B", None),  # first character only
        ("medmcqa", "\n\nC", "C"),
        ("pubmedqa", "Yes, it does.", "yes"),
        ("pubmedqa", " no", "no"),
        ("pubmedqa", "Maybe", "maybe"),
        ("pubmedqa", "A", None),
    ],
)
def test_flowertune_answer_parsing(name, output, expected):
    assert parse_answer(name, output) == expected


def test_flowertune_prompt_shape(bench_data, tmp_path):
    _, recs = prepare("medqa", bench_data, str(tmp_path))
    p = build_prompt("medqa", recs[0])
    head, tail = WRAPPER.split("{prompt}")
    assert p.startswith(head) and p.endswith(tail)
    assert (
        "Question: Which drug treats condition 0?\nOptions:\nA. drug a0\nB. drug b0\nC. drug c0\nD. drug d0\n"
        "The answer is:" in p
    )
    _, recs = prepare("pubmedqa", bench_data, str(tmp_path))
    p = build_prompt("pubmedqa", recs[0])
    assert "Does treatment 1 reduce mortality?\nOptions:\nyes\nno\nmaybe\nThe answer is:" in p


def test_flowertune_style_cli(tiny_model_path, bench_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDPIT_CACHE_DIR", str(tmp_path / "cache"))
    code = main(
        [
            "evaluate",
            "--benchmarks",
            "pubmedqa,medqa",
            "--protocol",
            "flowertune-style",
            "--model",
            tiny_model_path,
            "--dtype",
            "fp32",
            "--limit",
            "4",
            "--benchmark-data",
            str(bench_data),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "FlowerTune-style, unquantized, not leaderboard-eligible" in out and "CareQA" in out
    rows = [json.loads(x) for x in (tmp_path / "out/samples/backbone/medqa.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(set(r) >= {"output", "pred", "gold", "acc"} for r in rows)
    assert [r["gold"] for r in rows] == ["A", "B", "C", "D"]
    res = json.loads((tmp_path / "out/results.json").read_text())
    assert res["models"]["backbone"]["scores"]["medqa"]["acc"] == sum(r["acc"] for r in rows) / 4
    assert res["benchmarks"]["medqa"]["majority"] == 0.25 and res["benchmarks"]["pubmedqa"]["chance"] == 1 / 3


# ------------------------------------------------------------------------------------------------- compare
def test_compare_scores_shared_and_private_adapters(tiny_model_path, bench_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDPIT_CACHE_DIR", str(tmp_path / "cache"))
    sets = [
        "algorithm=fedit",
        f"model.name={tiny_model_path}",
        "model.dtype=fp32",
        "model.max_seq_len=128",
        "federation.rounds=1",
        "train.local_steps=1",
        "train.batch_size=2",
        "eval.max_examples=2",
        "lora.r=4",
        "lora.alpha=8",
        "partition.num_clients=2",
    ]
    out = tmp_path / "exp"
    argv = [
        "compare",
        "--algorithms",
        "fedit,locit",
        "--seeds",
        "1",
        "--out",
        str(out),
        "--limit",
        "3",
        "--max-new-tokens",
        "2",
        "--benchmarks",
        "medqa",
        "--benchmark-data",
        str(bench_data),
    ]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "benchmarks" / "results.json").read_text())
    assert list(res["models"]) == ["backbone", "fedit shared", "locit private"]
    private = res["models"]["locit private"]
    assert len(private["adapters"]) == 2 and all("client_" in a for a in private["adapters"])
    sc = private["scores"]["medqa"]
    assert sc["acc"] == pytest.approx(sum(sc["per_adapter_acc"]) / 2)
    assert "| locit private (mean of 2) |" in printed and "| majority class |" in printed
    assert (out / "benchmarks" / "samples" / "locit private" / "1" / "medqa.jsonl").is_file()
    report = (out / "report.md").read_text()  # rewritten with the accuracies once they are in
    assert "### medqa (n = 3)" in report and "| locit private (mean of 2 adapters: " in report


def test_compare_checks_benchmark_data_before_training(tmp_path, capsys):
    code = main(
        [
            "compare",
            "--algorithms",
            "fedit",
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "exp"),
            "--benchmarks",
            "medqa",
            "--benchmark-data",
            str(tmp_path),
        ]
    )
    assert code == 2 and "medqa/test.jsonl: missing" in capsys.readouterr().err
    assert not (tmp_path / "exp" / "runs").exists()
