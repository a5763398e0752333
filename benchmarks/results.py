"""Results kept as data: one JSON file per measurement under ``benchmarks/results/``, read by ``render_docs.py``.

A benchmark that produces a figure the documentation quotes writes it with :func:`write_result`, which records when,
where and how it was measured (date, machine, library versions, git commit, the command line) beside the data::

    from results import write_result  # benchmarks/ is on sys.path when a benchmark script runs

    write_result(
        "round_time",
        tables={"main": {"columns": [{"key": "method", "header": "method"},
                                     {"key": "seconds", "header": "one round", "format": "{:.1f} s"}],
                         "rows": [{"method": "fedpit", "seconds": 179.0}, {"method": "fedit", "seconds": 86.9}]}},
        values={"ratio": {"value": 2.06, "format": "{:.2f}x"}},
    )

The file's layout (every key but ``tables``/``values`` is metadata):

* ``tables``: ``{NAME: {"columns": [{"key", "header", "format"?}], "rows": [{key: cell}], "caption"?, "command"?}}``.
  A cell is a number, a string, ``null`` (rendered ``-``), a dict of fields formatted by the column's ``format``
  (``"{mean:.3f} ± {std:.3f}"``; a ``"format"`` key in the cell overrides it), or ``{"ref": "FILE:KEY"}``, which
  takes ``values[KEY]`` of another results file (one figure, one place). A row may carry ``"bold": [keys]``.
* ``values``: ``{KEY: {"value": v, "format": "..."}}``: single figures that prose quotes through
  ``<!-- value:FILE:KEY -->...<!-- /value -->`` markers, and that tables may ``ref``.
* formats: a ``str.format`` pattern, or ``"duration"`` (seconds as ``6 min 50 s``).

A benchmark rewrites its whole file each time it runs; the title is kept when none is given.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PACKAGES = ("torch", "transformers", "peft", "flwr", "fedpit")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        return None


def _gpu() -> str | None:
    """The first CUDA device's name, asked only when torch is already imported (a benchmark that used it)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except Exception:  # noqa: BLE001 - a broken CUDA setup must not lose the measurement
        return "unknown (CUDA query failed)"
    return None


def machine() -> dict:
    """The machine a measurement ran on: CPU model, cores, RAM, GPU (null when none), OS and threads."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "gpu": _gpu(),
        "os": f"{platform.system()} {platform.release()}",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def versions() -> dict:
    """Python and the libraries a figure depends on, read from installed metadata (nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD of the checkout, with ``+dirty`` when tracked files differ from it; None outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=cwd, capture_output=True).returncode != 0
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return None


def command_line() -> str:
    """This process's command line as a person would type it (the interpreter relative to the working directory)."""
    exe = sys.executable
    try:
        rel = os.path.relpath(exe)
        exe = rel if not rel.startswith("..") else exe
    except ValueError:
        pass
    return shlex.join([exe, *sys.argv])


def write_result(
    name: str,
    *,
    tables: dict | None = None,
    values: dict | None = None,
    command: str | None = None,
    title: str | None = None,
    notes: list[str] | None = None,
    out_dir: Path | str | None = None,
) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the measurement's tables and values and its provenance."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"results name {name!r}: a plain file name without '.json'")
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    path = folder / f"{name}.json"
    old = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    doc = {
        "name": name,
        "title": title or old.get("title") or name,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "git": git_commit(),
        "command": command or command_line(),
        "notes": notes or [],
        "tables": tables or {},
        "values": values or {},
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
