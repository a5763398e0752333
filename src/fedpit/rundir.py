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
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .adapters import StateDict, load_state, save_state


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

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
    def save_adapter(self, folder: Path, state: StateDict, peft_config: dict, extra: dict) -> None:
        """A folder ``peft.PeftModel.from_pretrained`` loads, plus ``fedpit.json`` (backbone name, template)."""
        folder.mkdir(parents=True, exist_ok=True)
        save_state(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        write_json(folder / "adapter_config.json", peft_config)
        write_json(folder / "fedpit.json", extra)

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
