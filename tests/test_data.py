"""Tests for fedpit.data: loading, validating and saving instruction examples."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpit.data import (
    Example,
    check_enough,
    demo_path,
    load_demo,
    load_examples,
    read_records,
    save_jsonl,
    validate_record,
)
from fedpit.errors import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
MEDINSTRUCT_TEST = SHARED / "alpacare/MedInstruct-test.jsonl"
CHATDOCTOR = SHARED / "chatdoctor/chatdoctor5k.json"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def raises_data_error(source, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_examples(source, **kwargs)
    err = info.value
    assert "\n" not in str(err)
    return err


# --- loading -------------------------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    examples = [
        Example("Name a symptom of flu.", "Fever.", category="qa"),
        Example("Summarise.", "A short summary.", input="A long text\nwith two lines."),
        Example("Translate to French: heart", "cœur"),
    ]
    path = tmp_path / "sub" / "out.jsonl"
    save_jsonl(examples, path)
    assert load_examples(path) == examples
    assert [p.name for p in path.parent.iterdir()] == ["out.jsonl"]  # no temporary file left behind
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"instruction": "Name a symptom of flu.", "input": "", "output": "Fever.", "category": "qa"}
    assert "category" not in json.loads(path.read_text(encoding="utf-8").splitlines()[2])


def test_save_jsonl_replaces_atomically_and_cleans_up_on_error(tmp_path):
    path = tmp_path / "out.jsonl"
    save_jsonl([Example("a", "b")], path)

    def broken():
        yield Example("c", "d")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_jsonl(broken(), path)
    assert load_examples(path) == [Example("a", "b")]  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_example_dict_round_trip():
    for ex in (Example("i", "o"), Example("i", "o", input="x", category="c")):
        assert Example.from_dict(ex.to_dict()) == ex
    assert Example("i", "o").to_dict() == {"instruction": "i", "input": "", "output": "o"}


def test_alpaca_json_array(tmp_path):
    path = write_json(
        tmp_path / "alpaca.json",
        [
            {"instruction": "  Give a tip. ", "input": "", "output": " Drink water.\n"},
            {"instruction": "Classify", "input": "aspirin", "output": "NSAID", "category": "pharmacology"},
            {"instruction": "Explain", "input": None, "output": "ok"},
        ],
    )
    assert load_examples(path) == [
        Example("Give a tip.", "Drink water."),
        Example("Classify", "NSAID", input="aspirin", category="pharmacology"),
        Example("Explain", "ok"),
    ]
    assert load_examples(path, format="alpaca") == load_examples(path)


def test_jsonl_with_blank_lines_and_crlf(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\r\n\r\n  \n{"instruction": "c", "output": "d"}')
    assert load_examples(path) == [Example("a", "b"), Example("c", "d")]
    assert [label for label, _ in read_records(path)] == ["line 1", "line 4"]


def test_explicit_format_overrides_suffix(tmp_path):
    path = write_jsonl(tmp_path / "data.txt", [{"instruction": "a", "output": "b"}])
    assert load_examples(path, format="jsonl") == [Example("a", "b")]
    write_json(path, [{"instruction": "a", "output": "b"}])
    assert load_examples(path, format="alpaca") == [Example("a", "b")]
    assert "unknown file type '.txt'" in str(raises_data_error(path))


def test_response_alias_and_output_field(tmp_path):
    path = write_jsonl(tmp_path / "claude.jsonl", [{"instruction": "q", "response": " r "}])
    assert load_examples(path) == [Example("q", "r")]
    path = write_jsonl(tmp_path / "both.jsonl", [{"instruction": "q", "output": "o", "response": "r", "mine": "m"}])
    assert load_examples(path) == [Example("q", "o")]
    assert load_examples(path, output_field="mine") == [Example("q", "m")]


def test_noinput_marker_becomes_empty(tmp_path):
    path = write_jsonl(tmp_path / "alpacare.jsonl", [{"instruction": "q", "input": " <noinput> ", "output": "o"}])
    assert load_examples(path) == [Example("q", "o", input="")]


def test_limit_keeps_first_valid_examples_after_validating_all(tmp_path):
    records = [{"instruction": f"q{i}", "output": "o"} for i in range(5)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    assert [e.instruction for e in load_examples(path, limit=2)] == ["q0", "q1"]
    assert load_examples(path, limit=0) == []
    write_jsonl(path, [*records, {"instruction": "bad"}])
    err = raises_data_error(path, limit=1)
    assert err.record == "line 6"


def test_duplicates_error_and_drop(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "dups.jsonl",
        [
            {"instruction": "q", "input": "x", "output": "first"},
            {"instruction": "q", "input": "y", "output": "other input"},
            {"instruction": " q ", "input": "x\n", "output": "second"},
            {"instruction": "q", "input": "x", "output": "third"},
        ],
    )
    err = raises_data_error(path)
    assert err.record == "line 3"
    assert "dups.jsonl: line 3:" in str(err) and "duplicate of line 1" in str(err)
    with caplog.at_level(logging.WARNING, logger="fedpit.data"):
        kept = load_examples(path, on_duplicate="drop")
    assert [e.output for e in kept] == ["first", "other input"]
    assert "dropped 2 duplicate" in caplog.text

    json_path = write_json(tmp_path / "dups.json", [{"instruction": "a", "output": "1"}] * 2)
    assert "record 2: duplicate of record 1" in str(raises_data_error(json_path))


def test_bad_arguments_are_value_errors(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "q", "output": "o"}])
    with pytest.raises(ValueError, match="on_duplicate"):
        load_examples(path, on_duplicate="keep")
    with pytest.raises(ValueError, match="format"):
        load_examples(path, format="csv")
    with pytest.raises(ValueError, match="limit"):
        load_examples(path, limit=-1)


# --- MedInstruct ---------------------------------------------------------------------------------------------

MEDINSTRUCT_ROWS = [
    {
        "id": i,
        "instruction": f"Question {i}?",
        "difficulty": str(i + 1),
        "gpt-4-answer": f"gpt4 answer {i}",
        "claude-2": f" claude answer {i}",
        "gpt-3.5-turbo-answer": f"turbo answer {i}",
        "text-davinci-003-answer": f"\ndavinci answer {i}",
    }
    for i in range(3)
]


def test_medinstruct_output_field_choice(tmp_path):
    path = write_jsonl(tmp_path / "MedInstruct-test.jsonl", MEDINSTRUCT_ROWS)
    assert [e.output for e in load_examples(path)] == ["gpt4 answer 0", "gpt4 answer 1", "gpt4 answer 2"]
    assert [e.input for e in load_examples(path)] == ["", "", ""]
    assert load_examples(path, output_field="claude-2")[0] == Example("Question 0?", "claude answer 0")
    assert load_examples(path, output_field="gpt-3.5-turbo")[1].output == "turbo answer 1"
    assert load_examples(path, output_field="text-davinci-003")[2].output == "davinci answer 2"
    assert load_examples(path, output_field="text-davinci-003-answer")[2].output == "davinci answer 2"
    assert load_examples(path, format="medinstruct", output_field="gpt-4") == load_examples(path)
    err = raises_data_error(path, output_field="llama-2")
    assert (err.record, err.field) == ("line 1", "llama-2")


def test_medinstruct_format_needs_no_gpt4_key(tmp_path):
    rows = [{"instruction": "q", "claude-2": " a"}]
    path = write_jsonl(tmp_path / "claude_only.jsonl", rows)
    assert load_examples(path, format="medinstruct", output_field="claude-2") == [Example("q", "a")]
    err = raises_data_error(path, format="medinstruct")
    assert err.field == "gpt-4-answer" and "missing" in str(err)


@pytest.mark.skipif(not MEDINSTRUCT_TEST.exists(), reason="shared MedInstruct-test.jsonl not present")
def test_real_medinstruct_test_set():
    examples = load_examples(MEDINSTRUCT_TEST, output_field="gpt-3.5-turbo")
    assert len(examples) == 216
    assert all(e.output and e.input == "" for e in examples)
    claude = load_examples(MEDINSTRUCT_TEST, output_field="claude-2")
    assert all(not e.output[0].isspace() for e in claude)


@pytest.mark.skipif(not CHATDOCTOR.exists(), reason="shared chatdoctor5k.json not present")
def test_real_chatdoctor_duplicates():
    # The file has 5452 records, 6 of which repeat an earlier (instruction, input) pair; the first repeat is
    # record 3153 (same patient question as record 2662).
    examples = load_examples(CHATDOCTOR, on_duplicate="drop")
    assert len(examples) == 5446
    err = raises_data_error(CHATDOCTOR)
    assert err.record == "record 3153" and "duplicate of record 2662" in str(err)


# --- bad input -----------------------------------------------------------------------------------------------

OK = {"instruction": "q", "output": "o"}

# (file name, file content, expected record label, expected field, message fragment)
BAD_FILES = [
    ("empty.jsonl", "", None, None, "no records"),
    ("blank.jsonl", "\n  \n", None, None, "no records"),
    ("empty.json", "", None, None, "no records"),
    ("empty_array.json", "[]", None, None, "no records"),
    ("object.json", '{"instruction": "q", "output": "o"}', None, None, "expected a JSON array of records"),
    ("broken.json", '[\n  {"instruction": "q",\n  "output": }\n]', None, None, "invalid JSON at line 3 column"),
    ("broken.jsonl", json.dumps(OK) + '\n\n{"instruction": "q", oops}\n', "line 3", None, "invalid JSON"),
    ("notobj.jsonl", json.dumps(OK) + "\n[1, 2]\n", "line 2", None, "expected a JSON object, got list"),
    ("notobj.json", json.dumps([OK, "text"]), "record 2", None, "expected a JSON object, got str"),
    ("noinstr.jsonl", json.dumps({"output": "o"}), "line 1", "instruction", "missing required field"),
    ("noout.jsonl", json.dumps({"instruction": "q"}), "line 1", "output", "expected 'output' or 'response'"),
    (
        "emptyinstr.json",
        json.dumps([OK, {"instruction": " \n\t", "output": "o"}]),
        "record 2",
        "instruction",
        "is empty",
    ),
    ("emptyout.jsonl", json.dumps({"instruction": "q", "output": ""}), "line 1", "output", "is empty"),
    ("emptyresp.jsonl", json.dumps({"instruction": "q", "response": " "}), "line 1", "response", "is empty"),
    (
        "intinstr.jsonl",
        json.dumps({"instruction": 3, "output": "o"}),
        "line 1",
        "instruction",
        "expected text, got int",
    ),
    (
        "listout.json",
        json.dumps([{"instruction": "q", "output": ["a"]}]),
        "record 1",
        "output",
        "expected text, got list",
    ),
    ("nullout.jsonl", json.dumps({"instruction": "q", "output": None}), "line 1", "output", "expected text, got null"),
    (
        "dictinput.jsonl",
        json.dumps({"instruction": "q", "input": {}, "output": "o"}),
        "line 1",
        "input",
        "expected text, got dict",
    ),
    ("floatcat.jsonl", json.dumps({**OK, "category": 1.5}), "line 1", "category", "expected text, got float"),
    ("emptycat.jsonl", json.dumps({**OK, "category": ""}), "line 1", "category", "is empty"),
]


@pytest.mark.parametrize(
    ("name", "content", "record", "field", "fragment"), BAD_FILES, ids=[case[0] for case in BAD_FILES]
)
def test_bad_files(tmp_path, name, content, record, field, fragment):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = raises_data_error(path)
    message = str(err)
    assert message.startswith(str(path) + ": ")
    assert (err.record, err.field) == (record, field)
    if record is not None:
        assert f": {record}: " in message
    if field is not None:
        assert f"field '{field}'" in message
    assert fragment in message


def test_invalid_jsonl_reports_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "q", "output": x}\n', encoding="utf-8")
    assert "(column 32)" in str(raises_data_error(path))


def test_missing_file_and_directory(tmp_path):
    err = raises_data_error(tmp_path / "nope.jsonl")
    assert str(err) == f"{tmp_path / 'nope.jsonl'}: file not found"
    err = raises_data_error(tmp_path / "nope.txt")
    assert "file not found" in str(err)
    (tmp_path / "dir.json").mkdir()
    assert "is a directory" in str(raises_data_error(tmp_path / "dir.json"))


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(OK).encode() + b'\n{"instruction": "caf\xe9", "output": "o"}\n')
    err = raises_data_error(path)
    assert "latin1.jsonl" in str(err) and "not UTF-8 text (line 2" in str(err)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([OK]).encode())
    assert load_examples(path) == [Example("q", "o")]


def test_validate_record_directly():
    ex = validate_record(
        {"instruction": " q ", "answer": " a "}, path="p.jsonl", record="line 9", output_field="answer"
    )
    assert ex == Example("q", "a")
    with pytest.raises(DataError, match=r"^p\.jsonl: line 9: field 'answer': missing required field"):
        validate_record({"instruction": "q"}, path="p.jsonl", record="line 9", output_field="answer")


# --- Hugging Face --------------------------------------------------------------------------------------------


def fake_datasets(monkeypatch, load_dataset) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hf_source_maps_fields(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"instruction": "q", "input": "<noinput>", "output": " o "}, {"instruction": "q2", "response": "r"}]

    fake_datasets(monkeypatch, load_dataset)
    assert load_examples("hf:org/set") == [Example("q", "o"), Example("q2", "r")]
    assert load_examples("org/set:validation", format="hf", limit=1) == [Example("q", "o")]
    # an explicit output_field turns off the "response" alias
    assert raises_data_error("hf:org/set:test", output_field="output").record == "record 2"
    assert calls == [("org/set", "train"), ("org/set", "validation"), ("org/set", "test")]


def test_hf_bad_record_is_labelled(monkeypatch):
    fake_datasets(monkeypatch, lambda name, split: [{"instruction": "q", "output": "o"}, {"instruction": "q"}])
    err = raises_data_error("hf:org/set")
    assert str(err).startswith("hf:org/set: record 2: field 'output': missing")


def test_hf_unreachable_hub(monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)\nmore detail")

    fake_datasets(monkeypatch, load_dataset)
    err = raises_data_error("hf:lavita/AlpaCare-MedInstruct-52k")
    assert str(err).startswith(
        "hf:lavita/AlpaCare-MedInstruct-52k: cannot load this Hugging Face dataset: the hub "
        "is not reachable from this machine (ConnectionError: Couldn't reach"
    )
    assert "pass a local .json or .jsonl file" in str(err)


def test_hf_other_failure(monkeypatch):
    def load_dataset(name, split):
        raise ValueError("Unknown split \"tset\". Should be one of ['train'].")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake_datasets(monkeypatch, load_dataset)
    err = raises_data_error("hf:org/set:tset")
    assert "cannot load this Hugging Face dataset (ValueError: Unknown split" in str(err)
    assert "not reachable" not in str(err)


def test_hf_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    assert "pip install 'fedpit[hub]'" in str(raises_data_error("hf:org/set"))


def test_hf_real_datasets_offline(tmp_path):
    """The real `datasets` package, offline: the error is the friendly one-liner, quickly."""
    code = (
        "from fedpit.data import load_examples\nfrom fedpit.errors import DataError\n"
        "try:\n    load_examples('hf:lavita/AlpaCare-MedInstruct-52k:test')\n"
        "except DataError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        "hf:lavita/AlpaCare-MedInstruct-52k:test: cannot load this Hugging Face dataset: "
        "the hub is not reachable from this machine ("
    )
    assert out.stdout.count("\n") == 1


# --- property tests ------------------------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
nonblank_text = any_text.filter(lambda s: s.strip())


def _norm_input(s: str) -> str:
    s = s.strip()
    return "" if s == "<noinput>" else s


records_strategy = st.lists(
    st.fixed_dictionaries(
        {"instruction": nonblank_text, "output": nonblank_text},
        optional={"input": st.one_of(st.none(), st.just("<noinput>"), any_text), "category": nonblank_text},
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda r: (r["instruction"].strip(), _norm_input(r.get("input") or "")),
)

PROPERTY_SETTINGS = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY_SETTINGS
@given(records=records_strategy)
def test_property_valid_records_load_back(tmp_path, records):
    expected = [
        Example(
            r["instruction"].strip(),
            r["output"].strip(),
            input=_norm_input(r.get("input") or ""),
            category=r["category"].strip() if "category" in r else None,
        )
        for r in records
    ]
    assert load_examples(write_jsonl(tmp_path / "p.jsonl", records)) == expected
    assert load_examples(write_json(tmp_path / "p.json", records)) == expected
    save_jsonl(expected, tmp_path / "saved.jsonl")
    assert load_examples(tmp_path / "saved.jsonl") == expected


CORRUPTIONS = {
    "remove": lambda r, f: r.pop(f),
    "int": lambda r, f: r.__setitem__(f, 7),
    "empty": lambda r, f: r.__setitem__(f, " "),
}


@PROPERTY_SETTINGS
@given(records=records_strategy, data=st.data())
def test_property_corrupted_record_is_pinpointed(tmp_path, records, data):
    index = data.draw(st.integers(0, len(records) - 1), label="index")
    how = data.draw(st.sampled_from(sorted(CORRUPTIONS)), label="how")
    field = data.draw(st.sampled_from(["instruction", "output"]), label="field")
    blank_before = data.draw(st.lists(st.booleans(), min_size=len(records), max_size=len(records)), label="blanks")
    CORRUPTIONS[how](records[index], field)

    lines, line_of = [], []
    for record, blank in zip(records, blank_before, strict=True):
        if blank:
            lines.append("")
        lines.append(json.dumps(record, ensure_ascii=False))
        line_of.append(len(lines))
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")

    for path, label in (
        (jsonl, f"line {line_of[index]}"),
        (write_json(tmp_path / "c.json", records), f"record {index + 1}"),
    ):
        err = raises_data_error(path)
        assert (err.record, err.field) == (label, field)
        assert f"{path}: {label}: field '{field}': " in str(err)


# --- demo data and check_enough ------------------------------------------------------------------------------


def test_demo_split_names():
    assert demo_path("train").name == "train.jsonl" and demo_path("test").parent.name == "demo"
    with pytest.raises(ValueError, match="split"):
        load_demo("validation")


def test_load_demo():
    train, test = load_demo(), load_demo("test")
    assert len(train) >= 150 and len(test) >= 40
    assert len({e.category for e in train}) >= 8
    for ex in train + test:
        assert 40 <= len(ex.output.split()) <= 150, ex.instruction


def test_check_enough():
    examples = [Example(f"q{i}", "o") for i in range(10)]
    check_enough(examples, num_clients=5, min_per_client=2, path="d.jsonl")
    with pytest.raises(DataError) as info:
        check_enough(examples, num_clients=4, min_per_client=3, path="d.jsonl")
    assert str(info.value) == "d.jsonl: 10 examples cannot give 4 clients at least 3 each (need 12)"
    with pytest.raises(ValueError):
        check_enough(examples, num_clients=0, min_per_client=3, path="d.jsonl")
