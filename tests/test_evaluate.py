"""`fedpit evaluate`: answers and offline metrics for an adapter or the bare backbone, optionally judged."""

import json
from pathlib import Path

import pytest

from fedpit.cli import main
from fedpit.data import load_demo
from fedpit.evaluate import engine_for, evaluate
from fedpit.judge import JudgeResult
from fedpit.runner import Runner


def fake_embed(texts):
    return [[1.0, float(len(t) % 7)] for t in texts]


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    from fedpit.config import load_config

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(
        overrides=[
            "algorithm=fedit",
            f"model.name={tiny_model_path}",
            "model.dtype=fp32",
            "model.max_seq_len=128",
            f"output_dir={out}",
            "run_name=e",
            "federation.rounds=1",
            "train.local_steps=2",
            "train.batch_size=2",
            "eval.max_examples=4",
            "lora.r=4",
            "lora.alpha=8",
        ]
    )
    return Runner(cfg, show_progress=False).run()["final_adapter"]


class FakeJudge:
    def __init__(self):
        self.items = None

    def compare(self, items):
        self.items = items
        per = [{"verdict_model_first": "win", "verdict_model_second": "tie", "item_score": 0.75} for _ in items]
        return JudgeResult.from_items(per)


def test_evaluate_an_adapter_is_deterministic_and_scores_every_item(trained):
    engine = engine_for(trained, dtype="fp32", max_seq_len=128)
    assert engine.lora.r == 4
    examples = load_demo("test")[:4]
    judge = FakeJudge()
    a = evaluate(engine, trained, examples, max_new_tokens=6, batch_size=2, embed=fake_embed, judge=judge)
    b = evaluate(engine, trained, examples, max_new_tokens=6, batch_size=2, embed=fake_embed)
    assert [r["answer"] for r in a.rows] == [r["answer"] for r in b.rows]
    assert a.metrics["n"] == 4 and set(a.metrics) >= {"rouge_l", "cosine", "reference_loss", "judge"}
    assert a.metrics["reference_loss"] > 0 and 0 <= a.metrics["rouge_l"] <= 1
    assert [i["model_output"] for i in judge.items] == [r["answer"] for r in a.rows]
    assert [i["reference_output"] for i in judge.items] == [e.output for e in examples]
    assert a.metrics["judge"]["win"] == pytest.approx(50.0) and a.metrics["judge"]["wt"] == pytest.approx(100.0)
    bare = evaluate(engine, None, examples, max_new_tokens=6, batch_size=2, embed=fake_embed)
    assert bare.metrics["reference_loss"] != pytest.approx(a.metrics["reference_loss"], abs=0)


def test_evaluate_cli_writes_answers_and_metrics(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                trained,
                "--limit",
                "3",
                "--max-new-tokens",
                "4",
                "--dtype",
                "fp32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = (out / "answers.jsonl").read_text().splitlines()
    assert len(rows) == 3 and {"answer", "reference", "rouge_l", "cosine"} <= set(json.loads(rows[0]))
    assert json.loads((out / "metrics.json").read_text())["n"] == 3
    capsys.readouterr()
    assert main(["evaluate", "--adapter", str(tmp_path), "--limit", "1"]) == 2
    assert "not an adapter folder" in capsys.readouterr().err


def test_evaluate_cli_reads_medinstruct_with_a_chosen_reference(trained, tmp_path):
    f = Path(__file__).resolve().parents[2] / "shared/data/alpacare/MedInstruct-test.jsonl"
    if not f.is_file():
        pytest.skip("MedInstruct-test not present")
    out = tmp_path / "mi"
    assert (
        main(
            [
                "evaluate",
                "--adapter",
                trained,
                "--test",
                str(f),
                "--reference",
                "gpt-3.5-turbo",
                "--limit",
                "2",
                "--max-new-tokens",
                "4",
                "--dtype",
                "fp32",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    first = json.loads((out / "answers.jsonl").read_text().splitlines()[0])
    src = json.loads(f.read_text().splitlines()[0])
    assert first["reference"] == src["gpt-3.5-turbo-answer"].strip()
