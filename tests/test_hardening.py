"""Bad input and silent failures from the reliability probes (issue 13, items 8-10): every one is now a one-line
error with exit code 2, found before a model loads and before anything is written, or a visible warning."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import sys
from pathlib import Path

import pytest

from fedpit.cli import main
from fedpit.errors import ConfigError, DataError


class ModelLoaded(Exception):
    """Raised by a stand-in for the model loader: input that reaches it passed every check."""


def _one_line_error(capsys, *words) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedpit: error: "), err
    for w in words:
        assert w in err[0], err[0]
    return err[0]


@pytest.fixture
def no_model(monkeypatch):
    """Every path that loads a model raises ModelLoaded instead."""

    def boom(*a, **k):
        raise ModelLoaded

    import fedpit.evaluate
    import fedpit.generate
    import fedpit.runner

    monkeypatch.setattr(fedpit.runner, "make_engine", boom)
    monkeypatch.setattr(fedpit.evaluate, "engine_for", boom)
    monkeypatch.setattr(fedpit.generate, "load_for_inference", boom)
    monkeypatch.setattr(fedpit.backbone, "load_backbone", boom)
    return boom


FAST = ["--set", "federation.rounds=1", "--set", "train.local_steps=1", "--set", "algorithm=fedit"]


# ------------------------------------------------------------------------------------------------ 8: lone surrogates
@pytest.mark.parametrize("field", ["instruction", "input", "output", "category"])
def test_a_lone_surrogate_in_any_text_field_is_a_data_error(tmp_path, field):
    from fedpit.data import load_examples

    rec = {"instruction": "a", "input": "b", "output": "c", "category": "d"}
    rec[field] = "x \ud800 y"
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps(rec) + "\n" + json.dumps({"instruction": "z", "output": "w"}) + "\n", encoding="utf-8")
    assert "\\ud800" in f.read_text(encoding="utf-8")  # the file itself is valid UTF-8 JSON
    with pytest.raises(DataError) as err:
        load_examples(f)
    assert (err.value.record, err.value.field) == ("line 1", field)
    assert "lone surrogate U+D800 at character 3" in str(err.value) and "\n" not in str(err.value)


def test_a_lone_surrogate_stops_the_run_before_any_folder_exists(tmp_path, capsys, no_model):
    f = tmp_path / "train.jsonl"
    f.write_text(
        "".join(json.dumps({"instruction": f"q{i}", "output": "a" if i else "\udfff"}) + "\n" for i in range(6)),
        encoding="utf-8",
    )
    runs = tmp_path / "runs"
    assert main(["run", *FAST, "--set", f"data.train={f}", "--set", f"output_dir={runs}"]) == 2
    _one_line_error(capsys, "train.jsonl: line 1: field 'output'", "surrogate")
    assert not runs.exists()


# ------------------------------------------------------------------------------------------------ 10: report
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD_RECORD = {"algorithm": "fedit", "model": "shared", "seed": 1, "setting": "", "rouge_l": 0.2}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, ["file not found"]),
        ('{"records": [', ["invalid JSON"]),
        ("[]", ["expected a JSON object"]),
        ("{}", ["no 'records'"]),
        ('{"records": []}', ["no records"]),
        ('{"records": 5}', ["field 'records'", "expected a list"]),
        ('{"records": [{"algorithm": "fedit"}]}', ["record 1", "field 'model'", "missing"]),
        ('{"records": [7]}', ["record 1", "expected an object"]),
        (json.dumps({"records": [GOOD_RECORD | {"seed": "one"}]}), ["record 1", "field 'seed'"]),
        (json.dumps({"records": [GOOD_RECORD | {"rouge_l": "high"}]}), ["field 'rouge_l'", "expected a number"]),
        (json.dumps({"records": [GOOD_RECORD], "curves": [{"algorithm": "x", "test_loss": ["a"]}]}), ["curve 1"]),
        (json.dumps({"records": [GOOD_RECORD], "meta": []}), ["field 'meta'"]),
    ],
)
def test_report_refuses_bad_results_with_one_line_and_writes_nothing(tmp_path, capsys, content, words):
    f = tmp_path / "exp" / "results.json"
    if content is not None:
        _write(f, content)
    assert main(["report", str(f)]) == 2
    _one_line_error(capsys, *words)
    assert not (tmp_path / "exp" / "report.md").exists()


def test_report_of_a_folder_reads_its_results_json(tmp_path, capsys):
    exp = tmp_path / "exp"
    _write(exp / "results.json", json.dumps({"records": [GOOD_RECORD, GOOD_RECORD | {"seed": 2, "rouge_l": 0.4}]}))
    assert main(["report", str(exp)]) == 0
    assert "| fedit | shared | 2 | 0.300 ± 0.141 |" in (exp / "report.md").read_text()
    assert main(["report", str(tmp_path)]) == 2
    _one_line_error(capsys, "without a results.json")


# ------------------------------------------------------------------------------------------------ 10: compare
@pytest.mark.parametrize(
    ("algorithms", "seeds", "words"),
    [
        ("", "1", ["--algorithms", "empty"]),
        (" , ", "1", ["--algorithms", "empty"]),
        ("fedit,fedit", "1", ["fedit more than once"]),
        ("fedit", "1,1", ["--seeds", "1 more than once"]),
        ("fedit", "", ["--seeds", "empty"]),
    ],
)
def test_compare_refuses_empty_or_repeated_lists_and_leaves_no_folder(
    tmp_path, capsys, no_model, algorithms, seeds, words
):
    out = tmp_path / "exp"
    assert main(["compare", "--algorithms", algorithms, "--seeds", seeds, "--out", str(out), *FAST]) == 2
    _one_line_error(capsys, *words)
    assert not out.exists()


def test_sweep_refuses_repeated_values(tmp_path, capsys, no_model):
    out = tmp_path / "exp"
    assert (
        main(
            [
                "sweep",
                "--set-values",
                "partition.alpha=1,0.5,1",
                "--algorithms",
                "fedit",
                "--seeds",
                "1",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 2
    )
    _one_line_error(capsys, "1 listed more than once")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ 10: chat, evaluate
@pytest.mark.parametrize(
    ("argv", "stdin", "words"),
    [
        (["--prompt", "hi", "--max-new-tokens", "0"], None, ["--max-new-tokens must be >= 1, got 0"]),
        (["--prompt", "hi", "--max-new-tokens", "-5"], None, ["--max-new-tokens"]),
        (["--prompt", "hi", "--repetition-penalty", "0"], None, ["--repetition-penalty"]),
        (["--prompt", ""], None, ["--prompt is empty"]),
        (["--prompt", "   "], None, ["--prompt is empty"]),
        ([], "", ["no instruction on stdin"]),
        ([], "\n   \n\n", ["no instruction on stdin"]),
    ],
)
def test_chat_checks_its_input_before_loading_the_model(monkeypatch, capsys, no_model, argv, stdin, words):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["chat", *argv]) == 2  # ModelLoaded would propagate: the model was never loaded
    _one_line_error(capsys, *words)


def test_chat_reads_the_first_stdin_instruction_before_loading_and_answers_every_line(monkeypatch, capsys):
    import fedpit.generate

    order = []
    monkeypatch.setattr(sys, "stdin", io.StringIO("\nfirst\n\nsecond\n"))
    monkeypatch.setattr(fedpit.generate, "load_for_inference", lambda *a, **k: order.append("load") or (0, 0, "alpaca"))
    monkeypatch.setattr(fedpit.generate, "answer", lambda m, t, instruction, *a, **k: f"<{instruction}>")
    assert main(["chat", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.split() == ["<first>", "<second>"] and order == ["load"]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--limit", "-1"], ["--limit must be an integer >= 0"]),
        (["--max-new-tokens", "0"], ["--max-new-tokens"]),
        (["--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_evaluate_checks_its_options_before_loading_the_model(tmp_path, capsys, no_model, argv, words):
    assert main(["evaluate", "--out", str(tmp_path / "ev"), *argv]) == 2
    _one_line_error(capsys, *words)
    assert not (tmp_path / "ev").exists()


# ---------------------------------------------------------------------------------------------- 10: unwritable outputs
def _unwritable_places(tmp_path: Path) -> list[Path]:
    afile = tmp_path / "afile"
    afile.write_text("x")
    places = [afile, afile / "below"]
    if Path("/proc/self").is_dir():
        places.append(Path("/proc/fedpit_runs"))  # nobody, not even root, can create files in /proc
    return places


def test_an_unwritable_output_dir_is_found_before_the_model_loads(tmp_path, capsys, no_model):
    for place in _unwritable_places(tmp_path):
        assert main(["run", *FAST, "--set", f"output_dir={place}"]) == 2
        _one_line_error(capsys, "output_dir")
    # a writable one gets as far as the model load, and nothing was created yet
    with pytest.raises(ModelLoaded):
        main(["run", *FAST, "--set", f"output_dir={tmp_path / 'new' / 'runs'}"])
    assert not (tmp_path / "new").exists()


def test_unwritable_evaluate_out_and_partition_json_or_plot_are_one_line_errors(tmp_path, capsys, no_model):
    for place in _unwritable_places(tmp_path):
        assert main(["evaluate", "--out", str(place)]) == 2
        _one_line_error(capsys, "--out")
        assert main(["partition", "--json", str(place / "p.json")]) == 2
        _one_line_error(capsys, "--json")
        assert main(["partition", "--plot", str(place / "p.png")]) == 2
        _one_line_error(capsys, "--plot")
    assert main(["partition", "--json", str(tmp_path)]) == 2  # a folder, not a file name
    _one_line_error(capsys, "is a folder")


def test_partition_plot_writes_a_png(tmp_path, capsys):
    png, js = tmp_path / "figs" / "split.png", tmp_path / "new" / "part.json"
    assert main(["partition", "--set", "partition.alpha=0.1", "--plot", str(png), "--json", str(js)]) == 0
    assert f"plot written to {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js.read_text())["alpha"] == 0.1


def test_write_private_text_is_owner_only_from_the_start(tmp_path):
    from fedpit.fsutil import write_private_text

    old = os.umask(0)
    try:
        p = write_private_text(tmp_path / "extraction" / "shared_round_001.jsonl", '{"instruction": "secret"}\n')
        p2 = write_private_text(p, "replaced\n")
    finally:
        os.umask(old)
    assert p == p2 and stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == "replaced\n"
    assert [x.name for x in p.parent.iterdir()] == ["shared_round_001.jsonl"]


# ------------------------------------------------------------------------------------------------ 10: model folders
def test_model_folders_that_cannot_be_models_are_named_in_one_line(tmp_path):
    from fedpit.backbone import resolve_model_path

    only_config = tmp_path / "fakemodel"
    only_config.mkdir()
    (only_config / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="fakemodel holds config.json but no weights"):
        resolve_model_path(str(only_config))
    (only_config / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        resolve_model_path(str(only_config))
    for missing in ("./models/nonexistent", str(tmp_path / "nope"), "~/nope-fedpit-model", "a/b/c"):
        with pytest.raises(ConfigError) as err:
            resolve_model_path(missing)
        assert "not found" in str(err.value) and "repo" not in str(err.value).lower()


def test_a_broken_model_folder_is_a_config_error_not_a_traceback(tmp_path):
    from fedpit.backbone import load_backbone

    bad = tmp_path / "broken"
    bad.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (bad / name).write_text("not json at all")
    with pytest.raises(ConfigError, match="broken: not a loadable transformers model folder"):
        load_backbone(str(bad), device="cpu")


# ------------------------------------------------------------------------------------------------ 10: interrupt hint
def test_the_interrupt_hint_names_the_real_run_folder(tmp_path, capsys, monkeypatch):
    import fedpit.runner

    def interrupted(self, **kw):
        self.run_dir = tmp_path / "runs" / "20261203-101010-fedit"
        raise KeyboardInterrupt

    monkeypatch.setattr(fedpit.runner.Runner, "run", interrupted)
    assert main(["run", *FAST]) == 130
    err = capsys.readouterr().err
    assert f"fedpit run --resume {tmp_path / 'runs' / '20261203-101010-fedit'}" in err and "RUN_DIR" not in err

    def early(self, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(fedpit.runner.Runner, "run", early)
    assert main(["run", *FAST]) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "RUN_DIR" not in err
    assert main(["run", "--resume", str(tmp_path / "r")]) == 2  # (not a run folder: the usual error, no hint)


# ------------------------------------------------------------------------------------------------ 10: truncation
def test_cut_examples_are_warned_about_once_with_their_count(tiny_model_path, caplog):
    from fedpit.backbone import load_backbone
    from fedpit.config import LoraConfig
    from fedpit.data import Example
    from fedpit.engine import Engine

    engine = Engine(
        load_backbone(tiny_model_path, dtype="fp32", device="cpu"), LoraConfig(r=2, alpha=4), max_seq_len=64
    )
    short = [Example(f"q{i}", "short answer") for i in range(3)]
    long = [Example("long", "word " * 5000), Example("longer", "word " * 20000)]
    with caplog.at_level(logging.WARNING, logger="fedpit.engine"):
        engine.encode(short)
        assert not caplog.records
        enc = engine.encode(short + long)
        engine.encode(long + [Example("again", "word " * 3000)])
    assert len(enc) == 5 and all(len(e.input_ids) == 64 for e in enc[3:])
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and msgs[0].startswith("2 of 5 examples are longer than model.max_seq_len = 64"), msgs
    assert "20001 tokens" in msgs[0] or "longest has 200" in msgs[0]


# ------------------------------------------------------------------------------------------------ 9: judge
def _fake_judge(tmp_path, respond):
    from types import SimpleNamespace

    from fedpit.judge import Judge, JudgeConfig

    calls = []

    def create(**kw):
        calls.append(kw)
        reply = respond(kw, len(calls))
        if isinstance(reply, Exception):
            raise reply
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content=reply))])

    client = SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=create)))
    return Judge(JudgeConfig(cache_dir=str(tmp_path / "cache")), client=client, sleep=lambda s: None), calls


def _rejected():
    import httpx
    import openai

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    return openai.AuthenticationError("bad key", response=httpx.Response(401, request=request), body=None)


def test_a_dead_judge_is_found_before_any_answer_is_generated(tmp_path, capsys, monkeypatch, no_model):
    # the CLI checks the endpoint right after parsing the options: before the model loads (ModelLoaded never raised)
    assert (
        main(
            [
                "evaluate",
                "--judge-url",
                "http://127.0.0.1:9/v1",
                "--judge-model",
                "x",
                "--limit",
                "1",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "judge endpoint http://127.0.0.1:9/v1")
    assert not (tmp_path / "ev").exists()


def test_evaluate_checks_the_judge_first_and_keeps_answers_for_the_rerun(tiny_model_path, tmp_path, monkeypatch):
    import fedpit.evaluate
    from fedpit.data import load_demo
    from fedpit.evaluate import engine_for, evaluate

    engine = engine_for(None, model=tiny_model_path, dtype="fp32", max_seq_len=128)
    examples = load_demo("test")[:3]

    def embed(texts):
        return [[1.0, float(len(t) % 5)] for t in texts]

    generated = []
    real_generate = fedpit.evaluate.generate
    monkeypatch.setattr(fedpit.evaluate, "generate", lambda *a, **k: generated.append(1) or real_generate(*a, **k))

    dead, calls = _fake_judge(tmp_path, lambda kw, n: _rejected())
    with pytest.raises(ConfigError, match="rejected the request: HTTP 401"):
        evaluate(
            engine, None, examples, max_new_tokens=4, batch_size=2, judge=dead, embed=embed, answers_dir=tmp_path / "ev"
        )
    assert generated == [] and len(calls) == 1 and calls[0]["max_tokens"] == 1  # one cheap request, nothing else

    # the judge answers the check, then fails while judging: the answers are on disk already
    flaky, calls = _fake_judge(tmp_path, lambda kw, n: "OK" if n == 1 else _rejected())
    with pytest.raises(ConfigError, match="HTTP 401"):
        evaluate(
            engine,
            None,
            examples,
            max_new_tokens=4,
            batch_size=2,
            judge=flaky,
            embed=embed,
            answers_dir=tmp_path / "ev",
        )
    assert generated == [1]
    saved = [json.loads(x)["answer"] for x in (tmp_path / "ev" / "answers.jsonl").read_text().splitlines()]
    assert len(saved) == 3

    # the rerun reuses them: no generation, same answers, judged
    good, calls = _fake_judge(tmp_path, lambda kw, n: "Output (a): 4, 4, 4, 4\nOutput (b): 3, 3, 3, 3")
    res = evaluate(
        engine, None, examples, max_new_tokens=4, batch_size=2, judge=good, embed=embed, answers_dir=tmp_path / "ev"
    )
    assert generated == [1] and [r["answer"] for r in res.rows] == saved
    assert res.metrics["judge"]["n_items"] == 3 and len(calls) == 1 + 6  # the check, then both orders per item
    # other settings (here: more new tokens) are not served from the saved answers
    evaluate(engine, None, examples, max_new_tokens=5, batch_size=2, embed=embed, answers_dir=tmp_path / "ev")
    assert generated == [1, 1]


# ------------------------------------------------------------------------------------------------ 10: private files
def test_a_run_writes_extraction_rows_owner_only_and_warns_once_about_cut_examples(tiny_cfg, caplog):
    from dataclasses import replace

    from fedpit.runner import Runner

    cfg = replace(tiny_cfg, algorithm="fedpit")
    cfg.federation.rounds = 1
    cfg.train.local_steps = 1
    cfg.eval.extraction_every_round = True
    cfg.eval.extraction_n = 2
    cfg.eval.extraction_max_new_tokens = 4
    cfg.selfgen.num_instructions = 2
    with caplog.at_level(logging.WARNING, logger="fedpit.engine"):
        summary = Runner(cfg, show_progress=False).run()
    run = Path(summary["run_dir"])
    private = sorted(run.glob("extraction/*.jsonl")) + sorted(run.glob("clients/*/round_*/*.jsonl"))
    assert len(list(run.glob("extraction/*.jsonl"))) >= 3  # shared round 1, backbone, private clients
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in private), [(p, oct(p.stat().st_mode)) for p in private]
    cut = [r.getMessage() for r in caplog.records if "longer than model.max_seq_len" in r.getMessage()]
    assert len(cut) == 1 and cut[0].startswith("160 of 160 examples"), cut  # the demo's prompts exceed 128 tokens
