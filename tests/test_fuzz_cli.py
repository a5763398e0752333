"""Property-based fuzz of the CLI's input handling (issue 13, must-reach): ``--set`` values, data files and TOML
configs go through the real entry point, ``fedpit.cli.main``, with no model ever loaded (the engine factory raises
:class:`ModelLoaded`, and MiniLM is replaced by a cheap embedder). Every case must end in one of three ways:

- success (``partition``, ``config``), or ``ModelLoaded`` for a ``run`` that passed every check;
- exit code 2 with exactly one line on stderr, ``fedpit: error: ...``;

never a traceback, and nothing written to the working folder or the output folder. stdout is a strict UTF-8 stream,
like a real terminal's, so a value that cannot be printed is caught too. 600 generated cases in all.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedpit.cli import main
from fedpit.config import valid_keys

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class ModelLoaded(Exception):
    pass


def _cheap_embed(texts):
    """Deterministic stand-in for MiniLM: a few character statistics per text."""
    return np.array([[len(t) % 17, sum(map(ord, t[:64])) % 31, t.count(" ") % 7, 1.0] for t in texts], dtype=float)


@pytest.fixture(scope="module")
def sandbox():
    """A working folder (must stay empty), a folder for inputs, and the patches that keep models out."""
    import fedpit.embed
    import fedpit.runner

    def boom(*a, **k):
        raise ModelLoaded

    with (
        tempfile.TemporaryDirectory() as work,
        tempfile.TemporaryDirectory() as inputs,
        pytest.MonkeyPatch.context() as mp,
    ):
        mp.setattr(fedpit.runner, "make_engine", boom)
        mp.setattr(fedpit.embed, "minilm_embed", _cheap_embed)
        mp.chdir(work)
        yield Path(work), Path(inputs)


WARNING_LINE = re.compile(r"^\d\d:\d\d:\d\d warning: ")


def run_cli(argv: list[str], work: Path) -> tuple[str, int | None, str, str]:
    """(outcome, exit code, stderr, stdout); outcome is 'ok', 'model' or 'error'. Raises on anything else."""
    out_buf, err_buf = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_buf, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_buf, encoding="utf-8", errors="backslashreplace", write_through=True)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except ModelLoaded:
        rc = None
    stderr = err_buf.getvalue().decode("utf-8")
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert not left, f"{argv}: left {left[:5]} behind"
    if rc is None:
        assert argv[0] == "run", argv
        return "model", None, stderr, ""
    stdout = out_buf.getvalue().decode("utf-8")
    if rc == 0:
        return "ok", 0, stderr, stdout
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if not WARNING_LINE.match(line)]  # a warning may come first (e.g. duplicates)
    assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], (argv, rc, stderr[-2000:])
    assert errors[0].startswith("fedpit: error: "), (argv, rc, stderr[-2000:])
    return "error", 2, stderr, stdout


# ------------------------------------------------------------------------------------------------ --set values
KEYS = valid_keys()
ODD = [
    "",
    " ",
    "0",
    "-1",
    "1e9",
    "1e-300",
    "nan",
    "inf",
    "-inf",
    "true",
    "false",
    "[]",
    "[1, 2]",
    '["q_proj"]',
    "{}",
    "null",
    "1.5",
    "2**64",
    "18446744073709551617",
    "demo",
    "hf:",
    "hf:x:y",
    "/",
    ".",
    "..",
    "a=b",
    "\ud800",
    "\udcff",
    "é",
    "0x10",
    "1_000",
    "+3",
    " 7 ",
    "1e400",
    "--",
    "\t",
    "data.jsonl",
]
text_value = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=()), max_size=12)
value = st.one_of(
    st.sampled_from(ODD),
    text_value,
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
override = st.one_of(
    st.tuples(st.sampled_from(KEYS), value).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.tuples(st.sampled_from(KEYS + ["", "x", "train", "train.", ".lr", "train.lr.x", "partition.alpha "]), value).map(
        lambda kv: f"{kv[0]}={kv[1]}"
    ),
    text_value,  # no "=" at all, mostly
)


def _str_keys() -> list[str]:
    from fedpit.config import Config

    def get(obj, key):
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    return [k for k in KEYS if isinstance(get(Config(), k), str)]


STR_KEYS = _str_keys()
str_override = st.tuples(st.sampled_from(STR_KEYS), st.one_of(text_value, st.sampled_from(ODD))).map(
    lambda kv: f"{kv[0]}={kv[1]}"
)


@FUZZ
@given(
    command=st.sampled_from(["run", "partition", "config", "config"]),
    overrides=st.one_of(st.lists(override, min_size=1, max_size=4), st.lists(str_override, min_size=1, max_size=2)),
)
def test_fuzz_set_values(sandbox, command, overrides):
    work, _ = sandbox
    argv = [command, "--set=federation.rounds=1", "--set=train.local_steps=1"]
    argv += [f"--set={o}" for o in overrides]
    outcome, _, _, stdout = run_cli(argv, work)
    if command == "config" and outcome == "ok":  # the printed config is valid TOML that loads back to itself
        _, inputs = sandbox
        (inputs / "printed.toml").write_text(stdout, encoding="utf-8")
        assert run_cli(["config", "--config", str(inputs / "printed.toml")], work)[::3] == ("ok", stdout)


# ------------------------------------------------------------------------------------------------ data files
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**20),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.text(st.characters(blacklist_characters="\x00"), max_size=6),
    st.sampled_from(["", "   ", "<noinput>", "\ud800", "a\udfffb", "\u2028", "é" * 3]),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["instruction", "input", "output", "category", "response", "gpt-4-answer", "other"]
good_text = st.text(string.ascii_letters + " .?", min_size=1, max_size=24)
record = st.one_of(
    st.fixed_dictionaries(
        {"instruction": good_text, "output": good_text},
        optional={"input": good_text, "category": st.sampled_from(["a", "b", "c"])},
    ),
    st.dictionaries(st.sampled_from(FIELDS), json_value, max_size=5),
    json_value,
)


def _encode(records: list, layout: str) -> bytes:
    if layout == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif layout == "jsonl-raw":  # unescaped non-ASCII, lone surrogates as raw (invalid) UTF-8 bytes
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8", "surrogatepass")
    else:
        text = json.dumps(records)
    return text.encode("utf-8")


@st.composite
def data_file(draw):
    kind = draw(st.sampled_from(["records", "records", "records", "bytes"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=200))
    else:
        records = draw(st.lists(record, min_size=0, max_size=14))
        data = _encode(records, draw(st.sampled_from(["jsonl", "jsonl-raw", "json"])))
        mutation = draw(st.sampled_from(["none", "none", "truncate", "bom", "flip", "crlf"]))
        if mutation == "truncate" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif mutation == "bom":
            data = b"\xef\xbb\xbf" + data
        elif mutation == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1 :]
        elif mutation == "crlf":
            data = data.replace(b"\n", b"\r\n")
    suffix = draw(st.sampled_from([".jsonl", ".jsonl", ".json", ".json", ".txt", ""]))
    return data, suffix


@FUZZ
@given(
    file=data_file(),
    command=st.sampled_from(["run", "partition"]),
    extra=st.lists(
        st.sampled_from(
            [
                "partition.num_clients=1",
                "partition.num_clients=2",
                "partition.min_per_client=1",
                "partition.method=iid",
                "partition.label=kmeans",
                "partition.label=category",
                "data.on_duplicate=drop",
                "data.format=alpaca",
                "data.format=jsonl",
                "data.format=medinstruct",
                "data.limit=3",
                "partition.num_clusters=2",
                "data.test=",
                "data.output_field=response",
            ]
        ),
        max_size=4,
    ),
)
def test_fuzz_data_files(sandbox, file, command, extra):
    work, inputs = sandbox
    data, suffix = file
    path = inputs / f"train{suffix}"
    path.write_bytes(data)
    argv = [command, "--set=federation.rounds=1", f"--set=data.train={path}", "--set=partition.min_per_client=1"]
    argv += [f"--set={e}" for e in extra]
    outcome, _, stderr, _ = run_cli(argv, work)
    if outcome == "error" and "line " in stderr and "train" in stderr:
        assert str(path) in stderr  # a record-level error names the file


# ------------------------------------------------------------------------------------------------ TOML config files
SECTIONS = sorted({k.split(".")[0] for k in KEYS if "." in k}) + ["bogus"]
toml_literal = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True).map(lambda f: repr(f).replace("inf", "inf")),
    st.sampled_from(
        [
            "true",
            "false",
            "nan",
            "-inf",
            "1979-05-27",
            "1979-05-27T07:32:00Z",
            "[]",
            '[1, "a"]',
            "{}",
            "{ x = 1 }",
            '"""multi\nline"""',
            "'lit'",
            '"\\ud800"',
            '"\\u00e9"',
            "0x1F",
            "1_000",
        ]
    ),
    st.text(max_size=10).map(json.dumps),
)
toml_line = st.one_of(
    st.sampled_from(SECTIONS).map(lambda s: f"[{s}]"),
    st.tuples(st.sampled_from([k.split(".")[-1] for k in KEYS] + ["x"]), toml_literal).map(
        lambda kv: f"{kv[0]} = {kv[1]}"
    ),
    st.tuples(st.sampled_from(KEYS), toml_literal).map(lambda kv: f'"{kv[0]}" = {kv[1]}'),
    st.text(max_size=15),
)


@settings(FUZZ, max_examples=200)
@given(
    lines=st.lists(toml_line, max_size=8), command=st.sampled_from(["config", "run", "partition"]), raw=st.booleans()
)
def test_fuzz_config_files(sandbox, lines, command, raw):
    work, inputs = sandbox
    path = inputs / "cfg.toml"
    text = "\n".join(lines) + "\n"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if raw else text.encode("utf-8", "replace"))
    run_cli([command, "--config", str(path), "--set=federation.rounds=1"], work)


def test_the_fuzz_reaches_every_outcome(sandbox):
    """The harness itself: a valid run reaches the model, a bad value is a one-line error, config prints."""
    work, _ = sandbox
    assert run_cli(["run", "--set=federation.rounds=1"], work)[0] == "model"
    assert run_cli(["run", "--set=train.lr=abc"], work)[:2] == ("error", 2)
    assert run_cli(["config", "--set=run_name=x\udcff"], work)[:2] == ("error", 2)  # not printable as UTF-8
    assert run_cli(["config", "--set=seed=3"], work)[0] == "ok"
    assert os.listdir(work) == []
    import fedpit.config

    def crash(*a, **k):
        raise RuntimeError("a bug")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(RuntimeError):  # a traceback is never swallowed
        mp.setattr(fedpit.config, "load_config", crash)
        run_cli(["config"], work)
