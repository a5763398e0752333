"""The run folder: everything a run writes, written so that a crash never leaves it looking complete.

Layout::

    config.toml            the resolved config (the run can be resumed from it alone)
    partition.json         which client holds which example
    metrics.jsonl          a row per client per round, and a row per round (kind = "round")
    rounds/round_NNN/      the global adapter after round NNN (peft folder; round_000 is the initial adapter)
    clients/client_K/      each simulated client's private state (never sent to the server)
    progress.json          last completed round and status (running / failed / complete)
    final/                 the final global adapter (peft folder + fedpit.json), only when complete
    summary.json           only when complete

A run's life is four calls, the same for every runtime: :meth:`RunDir.start` (or :meth:`RunDir.resume`), then
:meth:`RunDir.commit_round` after every round (round 0 is the initial adapter), then :meth:`RunDir.finish`.
Adapter folders are written and read by :func:`save_adapter_folder` and :func:`read_adapter_folder` only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .adapters import StateDict, load_state, save_state
from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
AdapterSaver = Callable[[Path, StateDict], None]  # writes one adapter folder (see save_adapter_folder)


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_adapter_folder(folder: Path, state: StateDict, peft_config: dict, meta: dict) -> None:
    """A folder ``peft.PeftModel.from_pretrained`` loads, plus ``fedpit.json`` (backbone name, template, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_state(state, folder / ADAPTER_FILES[0], metadata={"format": "pt"})
    write_json(folder / ADAPTER_FILES[1], peft_config)
    write_json(folder / "fedpit.json", meta)


def read_adapter_folder(folder: str | os.PathLike) -> tuple[dict, dict]:
    """(adapter_config.json, fedpit.json or {}) of an adapter folder; a one-line error for anything else."""
    folder = Path(folder)
    if not all((folder / f).is_file() for f in ADAPTER_FILES):
        raise ConfigError(f"{folder}: not an adapter folder (needs {' and '.join(ADAPTER_FILES)})")
    meta = read_json(folder / "fedpit.json") if (folder / "fedpit.json").is_file() else {}
    return read_json(folder / ADAPTER_FILES[1]), meta


class RunDir:
    def __init__(self, path: str | os.PathLike, saver: AdapterSaver | None = None):
        self.path = Path(path)
        self.saver = saver

    # -------------------------------------------------------------------- life
    @classmethod
    def start(cls, path: str | os.PathLike, cfg: Config, partition: dict, saver: AdapterSaver, **progress) -> RunDir:
        """A new run folder with its config and partition; refuses a folder that holds anything."""
        from .config import to_toml

        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"run_name: {path} already exists and is not empty; choose another name or --resume it")
        path.mkdir(parents=True, exist_ok=True)
        rd = cls(path, saver)
        rd.config_file.write_text(to_toml(cfg), encoding="utf-8")
        write_json(path / "partition.json", partition)
        rd.set_progress(completed_rounds=-1, status="starting", **progress)
        return rd

    @staticmethod
    def check_resumable(path: str | os.PathLike) -> None:
        rd = RunDir(path)
        if not rd.config_file.is_file():
            raise ConfigError(f"{path}: not a fedpit run folder (no config.toml)")
        if rd.is_complete():
            raise ConfigError(f"{path}: this run is already complete (summary.json exists)")
        if rd.progress()["completed_rounds"] < 0:
            raise ConfigError(f"{path}: the run never committed its initial adapter; start it again")

    @classmethod
    def resume(cls, path: str | os.PathLike, saver: AdapterSaver) -> tuple[RunDir, int]:
        """An interrupted run folder, rolled back to its last committed round; returns (folder, next round)."""
        cls.check_resumable(path)
        rd = cls(path, saver)
        done = rd.progress()["completed_rounds"]
        rd.truncate_metrics(done)
        return rd, done + 1

    def commit_round(self, r: int, global_state: StateDict, rows: list[dict]) -> None:
        """Commit order: adapter, metrics, then progress. A crash before progress is written re-runs the round."""
        self.saver(self.round_dir(r), global_state)
        self.append_metrics(rows)
        self.set_progress(completed_rounds=r, status="running")

    def finish(self, summary: dict, rounds: int) -> None:
        write_json(self.path / "summary.json", summary)
        self.set_progress(status="complete", completed_rounds=rounds)

    # -------------------------------------------------------------------- layout
    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    def round_dir(self, r: int) -> Path:
        return self.path / "rounds" / f"round_{r:03d}"

    def client_state_file(self, client: int, r: int) -> Path:
        return self.path / "clients" / f"client_{client}" / f"state.round_{r:03d}.safetensors"

    def latest_client_state(self, client: int, at_most: int) -> Path | None:
        """The client's private state as of round ``at_most`` (it is written only in rounds the client trained)."""
        folder = self.path / "clients" / f"client_{client}"
        found = sorted((int(f.name.split("_")[1].split(".")[0]), f) for f in folder.glob("state.round_*.safetensors"))
        found = [f for r, f in found if r <= at_most]
        return found[-1] if found else None

    # -------------------------------------------------------------------- progress
    def progress(self) -> dict:
        f = self.path / "progress.json"
        return read_json(f) if f.is_file() else {"completed_rounds": -1, "status": "new"}

    def set_progress(self, **kw) -> None:
        data = self.progress() | kw
        write_json(self.path / "progress.json", data)

    def is_complete(self) -> bool:
        return (self.path / "summary.json").is_file()

    # -------------------------------------------------------------------- adapters
    def load_global(self, r: int) -> StateDict:
        return load_state(self.round_dir(r) / "adapter_model.safetensors")

    # -------------------------------------------------------------------- metrics
    def append_metrics(self, rows: list[dict]) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate_metrics(self, last_round: int) -> None:
        """Drop rows of rounds after ``last_round`` (left by a crash between writing metrics and committing)."""
        rows = [r for r in self.read_metrics() if r.get("round", 0) <= last_round]
        tmp = self.metrics_file.with_name("metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.metrics_file)
        for d in (self.path / "rounds").glob("round_*"):
            if int(d.name.split("_")[1]) > last_round:
                shutil.rmtree(d, ignore_errors=True)
