"""The documentation against its data: every rendered table equals what its results file gives, every marker names a
results file that exists, every results file says where it came from, and the README stays short and starts with the
commands CI runs. Nothing here loads a model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from benchmark_scripts import load

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


render = load("render_docs")
results = load("results")
PAGES = render.documents()
RESULT_FILES = sorted(RESULTS.glob("*.json"))


def test_every_rendered_table_and_figure_equals_its_results_file():
    assert render.differences(PAGES) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_marker_names_an_existing_results_file(page):
    text = page.read_text(encoding="utf-8")
    for _kind, name, _key in render.markers(text):
        assert (RESULTS / f"{name}.json").is_file(), f"{page.name}: no benchmarks/results/{name}.json"
    # a marker that does not parse (a typo in its syntax) would be silently ignored: none may be left
    opened = len(re.findall(r"<!-- (results|value):", text))
    assert opened == len(render.markers(text)), f"{page.name}: a results/value marker is malformed"
    assert text.count("<!-- /results -->") == len(render.TABLE_RE.findall(text)), f"{page.name}: unclosed table"


def test_check_exits_non_zero_when_a_table_differs(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    doc = "<!-- value:default_run:heldout_after -->9.999<!-- /value -->\n"
    page.write_text(doc, encoding="utf-8")
    monkeypatch.setattr(render, "documents", lambda root=render.ROOT: [page])
    monkeypatch.setattr(render, "ROOT", tmp_path)
    assert render.main(["--check"]) == 1
    assert render.main([]) == 0  # renders it
    assert render.main(["--check"]) == 0
    assert "9.999" not in page.read_text(encoding="utf-8")


def test_a_marker_naming_a_missing_file_or_table_is_reported():
    page = ROOT / "docs" / "x.md"
    with pytest.raises(render.RenderError):
        render.render_table("no_such_results_file", "main", page)
    with pytest.raises(render.RenderError):
        render.render_table("default_run", "no_such_table", page)


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_every_results_file_says_when_where_and_how(path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    for key in ("name", "title", "date", "machine", "versions", "command", "tables", "values"):
        assert key in doc, f"{path.name}: no '{key}'"
    assert doc["name"] == path.stem
    assert re.match(r"\d{4}-\d{2}-\d{2}", doc["date"]), f"{path.name}: date {doc['date']!r}"
    assert doc["command"], f"{path.name}: no command"
    assert doc["tables"] or doc["values"], f"{path.name}: holds no figure"
    for name, table in doc["tables"].items():
        keys = [c["key"] for c in table["columns"]]
        assert len(keys) == len(set(keys)), f"{path.name}:{name}: repeated column"
        ids = [r["id"] for r in table["rows"] if "id" in r]
        assert len(ids) == len(set(ids)), f"{path.name}:{name}: repeated row id"


def test_every_results_file_feeds_the_documentation():
    used = {name for page in PAGES for _kind, name, _key in render.markers(page.read_text(encoding="utf-8"))}
    referenced = set()
    for path in RESULT_FILES:
        referenced |= set(re.findall(r'"ref": "([\w.-]+):', path.read_text(encoding="utf-8")))
    orphans = [p.stem for p in RESULT_FILES if p.stem not in used | referenced]
    assert orphans == [], f"results files nothing renders: {orphans}"


def test_write_result_records_provenance(tmp_path):
    path = results.write_result(
        "example",
        tables={"main": {"columns": [{"key": "x", "header": "x", "format": "{:.1f}"}], "rows": [{"x": 1.25}]}},
        values={"v": {"value": 3, "format": "{}"}},
        command="python bench.py --flag",
        out_dir=tmp_path,
    )
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["command"] == "python bench.py --flag"
    assert set(doc["machine"]) >= {"cpu", "cores", "ram_gib", "gpu"}
    assert set(doc["versions"]) >= {"python", "torch", "transformers", "peft", "flwr", "fedpit"}
    assert doc["tables"]["main"]["rows"] == [{"x": 1.25}]
    with pytest.raises(ValueError):
        results.write_result("../escape", values={}, out_dir=tmp_path)


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines (at most 220)"


def test_readme_quick_start_is_what_ci_runs():
    assert _readme_commands()[:3] == ["make install", "make test", ".venv/bin/fedpit run"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make install" in ci and "make test" in ci
    assert re.search(r'/\.venv/bin/fedpit"? run\b', ci), ".ci/run no longer runs the README's fedpit run"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_speak_to_users_not_of_their_history(page):
    text = page.read_text(encoding="utf-8")
    for pattern in (r"(?<![/\w])issue\s*#?\d+", r"\blast session\b", r"\bas before\b", r"(?<![\w/])#\d+\b"):
        assert not re.search(pattern, text, re.I), f"{page.name}: '{pattern}'"


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: link to missing {target}"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{page.name}: no heading '#{anchor}' in {path.name}"
