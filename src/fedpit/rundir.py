"""The run folder: everything a run writes, written so that a crash never leaves it looking complete.

Layout::

    config.toml            the resolved config (the run can be resumed from it alone)
    partition.json         which client holds which example
    metrics.jsonl          a row per client per round, and a row per round (kind = "round")
    rounds/round_NNN/      the global adapter after round NNN (peft folder; round_000 is the initial adapter);
                           its manifest.json is the round's commit record: the sha256 of every file the round
                           wrote (adapter, clients' state, ...), its metrics rows and the config fingerprint
    clients/client_K/      each simulated client's private state (never sent to the server)
    fingerprint.json       the settings that change the result, and their sha256 (resume refuses other settings)
    progress.json          last completed round and status (running / failed / complete)
    final/                 the final global adapter (peft folder + fedpit.json), only when complete
    summary.json           only when complete

A run's life is four calls, the same for every runtime: :meth:`RunDir.start` (or :meth:`RunDir.resume`), then
:meth:`RunDir.commit_round` after every round (round 0 is the initial adapter), then :meth:`RunDir.finish`.
Adapter folders are written and read by :func:`save_adapter_folder` and :func:`read_adapter_folder` only; each
carries a ``manifest.json`` (sha256 of its files), verified when it is read.

A round is committed when its ``manifest.json`` names it (written atomically, last but for progress.json); resume
verifies every committed round's checksums, recovers progress.json and metrics.jsonl from the manifests, and never
deletes a committed round: what it cannot trust is a one-line error naming the file (exit code 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .adapters import StateDict, load_state, save_state
from .errors import ConfigError, DataError, TrainingError
from .fsutil import TMP_SUFFIX, write_atomic

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("fedpit.rundir")

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.json"
# settings that place or label a run but do not change what it computes: left out of the fingerprint
NOT_FINGERPRINTED = frozenset(
    {"output_dir", "run_name", "model.cache_dir", "model.device", "flower.wait_for_nodes_s", "flower.round_timeout_s"}
)
FAULT_ENV = "FEDPIT_FAULT_KILL"  # test hook: SIGKILL this process at the named fault point (see fault_point)
AdapterSaver = Callable[[Path, StateDict], None]  # writes one adapter folder (see save_adapter_folder)


def fault_point(name: str) -> None:
    """Kill this process (SIGKILL, as ``kill -9``) when ``$FEDPIT_FAULT_KILL`` names this point. The crash tests use
    it; the points are ``round_R_start``, ``round_R_client_K`` (after client K's update), ``commit_R_adapter``,
    ``commit_R_metrics`` and ``commit_R_manifest`` (after that step of round R's commit)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------- JSON
def finite_json(data):
    """``data`` with every non-finite float (nan, inf) replaced by None, so it is valid JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_json(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_json(v) for v in data]
    return data


def write_json(path: Path, data) -> None:
    """Atomically, and always valid JSON: a non-finite number is written as null, never as a bare NaN."""
    write_atomic(path, json.dumps(finite_json(data), indent=2, default=str, allow_nan=False) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_json_file(path: Path, what: str):
    """A JSON file the run wrote; a one-line error naming it when it is unreadable."""
    try:
        return read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing ({what})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed {what} ({str(e).splitlines()[0][:80]})") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_warned: set[str] = set()


def warn_once(msg: str) -> None:
    """A warning about a run folder, printed once per process (resume checks a folder before and after the model
    loads)."""
    if msg not in _warned:
        _warned.add(msg)
        log.warning("%s", msg)


def _row_line(row: dict) -> str:
    return json.dumps(row, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------------------- checks
def check_finite(state: StateDict, what: str) -> None:
    """Raise TrainingError naming ``what`` when a tensor of ``state`` holds nan or inf."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainingError(f"{what}: non-finite values (nan/inf) in {len(bad)} tensor(s), e.g. {bad[0]}")


def fingerprint(cfg: Config) -> dict:
    """The resolved settings that change a run's result (not where it is written or what it is called)."""
    flat: dict = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif f"{prefix}{k}" not in NOT_FINGERPRINTED:
                flat[f"{prefix}{k}"] = v

    walk(dataclasses.asdict(cfg), "")
    settings = json.loads(json.dumps(finite_json(flat), default=str))
    return {"sha256": fingerprint_of(settings), "settings": settings}


def fingerprint_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------- manifests
def write_manifest(folder: Path, files: list[str], base: str = ".", **extra) -> None:
    """``folder/manifest.json``: the sha256 of ``files`` (paths relative to ``folder/base``), written atomically."""
    root = folder / base
    body = finite_json({"base": base, **extra, "files": {f: sha256_file(root / f) for f in files}})
    write_json(folder / MANIFEST, {**body, "sha256": _self_sha256(body)})


def _self_sha256(body: dict) -> str:
    """A manifest's checksum of itself (every key but ``sha256``), so a damaged manifest is found, not believed."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def read_manifest(folder: Path) -> dict | None:
    """``folder/manifest.json`` (None when there is none); a one-line error when it is damaged."""
    f = Path(folder) / MANIFEST
    if not f.is_file():
        return None
    m = read_json_file(f, "manifest")
    files = m.get("files") if isinstance(m, dict) else None
    if (
        not isinstance(files, dict)
        or not isinstance(m.get("base"), str)
        or not all(isinstance(v, str) for v in files.values())
    ):
        raise ConfigError(f"{f}: malformed manifest (needs 'base' and 'files' of sha256 digests)")
    if _self_sha256({k: v for k, v in m.items() if k != "sha256"}) != m.get("sha256"):
        raise ConfigError(f"{f}: damaged manifest (its own sha256 does not match its content); restore it")
    return m


def verify_manifest(folder: Path, m: dict, *, inside_only: bool = False) -> None:
    """Every file ``m`` lists exists with its recorded sha256; a one-line error naming the first that does not."""
    folder = Path(folder)
    root = folder / m["base"]
    for rel, digest in m["files"].items():
        p = root / rel
        if inside_only and p.resolve().parent != folder.resolve():
            continue
        if not p.is_file():
            raise ConfigError(f"{p}: missing (listed in {folder / MANIFEST}); restore it")
        if sha256_file(p) != digest:
            raise ConfigError(
                f"{p}: checksum mismatch: the file changed after it was written (sha256 in {folder / MANIFEST}); "
                "restore it"
            )


# ---------------------------------------------------------------------------------------------------------- adapters
def save_adapter_folder(folder: Path, state: StateDict, peft_config: dict, meta: dict) -> None:
    """A folder ``peft.PeftModel.from_pretrained`` loads, plus ``fedpit.json`` (backbone name, template, ...) and
    ``manifest.json`` (the sha256 of those files)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_state(state, folder / ADAPTER_FILES[0], metadata={"format": "pt"})
    write_json(folder / ADAPTER_FILES[1], peft_config)
    write_json(folder / "fedpit.json", meta)
    write_manifest(folder, [*ADAPTER_FILES, "fedpit.json"])


def load_adapter_state(folder: str | os.PathLike) -> StateDict:
    """The tensors of an adapter folder: a one-line error naming the file when it is truncated, not safetensors, or
    holds nan/inf."""
    f = Path(folder) / ADAPTER_FILES[0]
    try:
        state = load_state(f)
    except FileNotFoundError:
        raise ConfigError(f"{f}: missing") from None
    except Exception as e:  # safetensors raises its own error types for a truncated or garbled file
        raise ConfigError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0][:80]})") from None
    try:
        check_finite(state, str(f))
    except TrainingError as e:
        raise ConfigError(str(e)) from None
    return state


def read_adapter_folder(folder: str | os.PathLike) -> tuple[dict, dict]:
    """(adapter_config.json, fedpit.json or {}) of an adapter folder, its files checked against its manifest and its
    tensors readable and finite; a one-line error naming the file for anything else."""
    folder = Path(folder)
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"{folder / missing[0]}: missing, so {folder} is not an adapter folder "
            f"(needs {' and '.join(ADAPTER_FILES)})"
        )
    m = read_manifest(folder)
    if m is not None:
        verify_manifest(folder, m, inside_only=True)
    pc = read_json_file(folder / ADAPTER_FILES[1], "adapter config")
    meta = read_json_file(folder / "fedpit.json", "adapter metadata") if (folder / "fedpit.json").is_file() else {}
    if not isinstance(pc, dict) or not isinstance(meta, dict):
        raise ConfigError(f"{folder}: malformed adapter folder ({ADAPTER_FILES[1]} and fedpit.json hold JSON objects)")
    load_adapter_state(folder)
    return pc, meta


def _claim(path: Path, unique: bool) -> Path:
    """Create the run folder atomically (exclusive mkdir). A generated name (``unique``) that is taken gets a suffix
    (-2, -3, ...); an explicit one that exists is an error, unless it is an empty folder this call claims first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000 if unique else 2):
        p = path if i == 1 else path.with_name(f"{path.name}-{i}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            if unique:
                continue
        try:  # an explicit, existing empty folder: claimed by creating its config.toml exclusively
            if p.is_dir() and not any(p.iterdir()):
                os.close(os.open(p / "config.toml", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return p
        except FileExistsError:
            pass
    raise ConfigError(f"run_name: {path} already exists and is not empty; choose another name or --resume it")


class RunDir:
    def __init__(self, path: str | os.PathLike, saver: AdapterSaver | None = None):
        self.path = Path(path)
        self.saver = saver
        self.config_sha256: str | None = None  # the fingerprint every round's manifest records

    # -------------------------------------------------------------------- life
    @classmethod
    def start(
        cls, path: str | os.PathLike, cfg: Config, partition: dict, saver: AdapterSaver, *, unique=False, **progress
    ) -> RunDir:
        """A new run folder (created atomically) with its config, partition and fingerprint; refuses a folder that
        holds anything. With ``unique`` (a generated name), a taken name gets a suffix instead."""
        from .config import to_toml

        path = _claim(Path(path), unique)
        if path.name != cfg.run_name:
            cfg = dataclasses.replace(cfg, run_name=path.name)
        rd = cls(path, saver)
        write_atomic(rd.config_file, to_toml(cfg))
        write_json(path / "partition.json", partition)
        fp = fingerprint(cfg)
        write_json(path / FINGERPRINT, fp)
        rd.config_sha256 = fp["sha256"]
        rd.set_progress(completed_rounds=-1, status="starting", **progress)
        return rd

    @staticmethod
    def check_resumable(path: str | os.PathLike, cfg: Config | None = None) -> int:
        """The last committed round of an interrupted run folder, every committed round's checksums verified (and,
        given ``cfg``, its fingerprint); a one-line error otherwise. Deletes nothing."""
        return len(RunDir(path)._verified(cfg)) - 1

    @classmethod
    def resume(cls, path: str | os.PathLike, saver: AdapterSaver, cfg: Config | None = None) -> tuple[RunDir, int]:
        """An interrupted run folder, verified and set back to its last committed round (progress.json and
        metrics.jsonl rebuilt from the committed rounds' manifests); returns (folder, next round). Nothing
        committed is deleted; an uncommitted round's files are overwritten when it runs again."""
        rd = cls(path, saver)
        manifests = rd._verified(cfg)
        done = len(manifests) - 1
        rd.config_sha256 = fingerprint(cfg)["sha256"] if cfg is not None else manifests[0].get("config")
        rd.rebuild_metrics(manifests)
        rd.set_progress(completed_rounds=done, status="resuming")
        return rd, done + 1

    def _verified(self, cfg: Config | None) -> list[dict]:
        if not self.config_file.is_file():
            raise ConfigError(f"{self.path}: not a fedpit run folder (no config.toml)")
        if self.is_complete():
            self.verify_complete()
            raise ConfigError(f"{self.path}: this run is already complete (summary.json exists)")
        manifests = self.committed_rounds()
        if (
            not manifests
            and (self.round_dir(0) / ADAPTER_FILES[0]).is_file()
            and isinstance(claimed := self.progress().get("completed_rounds"), int)
            and claimed > 0
        ):
            raise ConfigError(
                f"{self.round_dir(0) / MANIFEST}: missing: the rounds carry no commit records (written by a fedpit "
                "without round checksums, or damaged), so they cannot be verified for resume (nothing was deleted)"
            )
        if not manifests:
            raise ConfigError(
                f"{self.path}: the run never committed its initial adapter (no rounds/round_000/{MANIFEST}); "
                "start it again under another name (nothing was deleted)"
            )
        self.check_progress(len(manifests) - 1)
        if cfg is not None:
            self.check_fingerprint(cfg, manifests[0].get("config"))
        for r, m in enumerate(manifests[1:], 1):
            if m.get("config") != manifests[0].get("config"):
                raise ConfigError(
                    f"{self.round_dir(r) / MANIFEST}: round {r} was committed with other settings than round 0"
                )
        return manifests

    def commit_round(self, r: int, global_state: StateDict, rows: list[dict]) -> None:
        """Commit order: adapter, metrics, the round's manifest (the commit record: checksums of every file of the
        round, its metrics rows), then progress. A crash before the manifest re-runs the round on resume; a
        non-finite global adapter is never committed."""
        check_finite(global_state, f"round {r}: the aggregated global adapter")
        rows = json.loads(json.dumps(finite_json(rows), default=float))  # what metrics.jsonl and the manifest hold
        self.saver(self.round_dir(r), global_state)
        fault_point(f"commit_{r}_adapter")
        self.append_metrics(rows)
        fault_point(f"commit_{r}_metrics")
        d = self.round_dir(r)
        write_manifest(d, self.round_files(r), "../..", round=r, config=self.config_sha256, rows=rows)
        fault_point(f"commit_{r}_manifest")
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

    def round_files(self, r: int) -> list[str]:
        """Every file round ``r`` wrote in this folder (relative paths): its global adapter, the clients' private
        state and local outputs, its extraction rows; round 0 also the partition."""
        tag = f"round_{r:03d}"
        found = [p for p in self.round_dir(r).iterdir() if p.name != MANIFEST]
        found += self.path.glob(f"clients/client_*/state.{tag}.safetensors")
        found += (p for p in self.path.glob(f"clients/client_*/{tag}/**/*"))
        found += self.path.glob(f"extraction/shared_{tag}.jsonl")
        if r == 0:
            found.append(self.path / "partition.json")
        return sorted(str(p.relative_to(self.path)) for p in found if p.is_file() and not p.name.endswith(TMP_SUFFIX))

    # -------------------------------------------------------------------- committed rounds
    def committed_rounds(self) -> list[dict]:
        """The manifests of the committed rounds 0..N, each round's files verified against its checksums. A round is
        committed when its manifest names it; a gap (a later round committed after one that is not) or a damaged
        file is a one-line error naming it."""
        numbers = []
        for d in (self.path / "rounds").glob("round_*"):
            tail = d.name.split("_", 1)[1]
            if d.is_dir() and tail.isdigit():
                numbers.append(int(tail))
        marks = {}
        for r in sorted(numbers):
            m = read_manifest(self.round_dir(r))
            marks[r] = m if m is not None and m.get("round") == r else None
        committed = [r for r, m in marks.items() if m is not None]
        last = max(committed, default=-1)
        for r in range(last + 1):
            if marks.get(r) is None:
                raise ConfigError(
                    f"{self.round_dir(r) / MANIFEST}: missing or not a commit record, but round {last} after it is "
                    "committed; restore it (nothing was deleted)"
                )
        for r in range(last + 1):
            verify_manifest(self.round_dir(r), marks[r])
        return [marks[r] for r in range(last + 1)]

    # -------------------------------------------------------------------- progress
    def progress(self) -> dict:
        """progress.json, or a stand-in when it is missing or unreadable (resume recovers it from the manifests)."""
        f = self.path / "progress.json"
        try:
            p = read_json(f)
        except (OSError, ValueError, UnicodeDecodeError):
            p = None
        return p if isinstance(p, dict) else {"completed_rounds": -1, "status": "new"}

    def set_progress(self, **kw) -> None:
        data = self.progress() | kw
        write_json(self.path / "progress.json", data)

    def check_progress(self, done: int, *, warn: bool = True) -> None:
        """Cross-check progress.json with the committed rounds (``done`` is the last one): it may lag behind them
        (a crash after the commit record) or be missing or damaged (recovered, with a warning), but it may not
        claim a round whose commit record is gone."""
        f = self.path / "progress.json"
        try:
            p = read_json(f)
            claimed = p["completed_rounds"]
            if not isinstance(claimed, int) or isinstance(claimed, bool):
                raise ValueError("completed_rounds is not an integer")
        except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:
            why = "missing" if not f.exists() else f"unreadable ({str(e).splitlines()[0][:60]})"
            if warn:  # not when the run is complete: resume refuses it, and one line says so
                warn_once(f"{f}: {why}; recovered from the committed rounds' checksums: round {done} is the last")
            return
        if claimed > done:
            raise ConfigError(
                f"{self.round_dir(done + 1) / MANIFEST}: missing, but {f} says round {claimed} was committed; "
                "restore the round folders (nothing was deleted)"
            )

    def check_fingerprint(self, cfg: Config, committed: str | None) -> None:
        """Refuse to resume with settings other than the run's own, naming the keys that differ."""
        want = fingerprint(cfg)
        f = self.path / FINGERPRINT
        try:
            stored = read_json(f)
            ok = isinstance(stored, dict) and isinstance(stored.get("settings"), dict)
        except (OSError, ValueError, UnicodeDecodeError):
            stored, ok = None, False
        if ok and fingerprint_of(stored["settings"]) == stored.get("sha256") == committed:
            from .config import Config as Defaults

            added = fingerprint(Defaults())["settings"]  # a key a later version added, at its default, changes nothing
            have = added | stored["settings"]
            diff = sorted(
                k for k in have.keys() | want["settings"].keys() if have.get(k, ...) != want["settings"].get(k, ...)
            )
            if diff:
                raise ConfigError(
                    f"{self.config_file}: {', '.join(diff)} differ from the settings this run started with "
                    f"({f}); a resumed run keeps them: start a new run to change them"
                )
            return
        if committed is not None and want["sha256"] != committed:
            raise ConfigError(
                f"{self.config_file}: the settings differ from those this run started with (fingerprint in "
                f"{self.round_dir(0) / MANIFEST}); {f} is missing or damaged, so the keys cannot be named"
            )
        warn_once(f"{f}: missing or damaged; rewritten from the config (it matches the committed rounds)")
        write_json(f, want)

    def verify_complete(self) -> None:
        """A complete run's adapters: every committed round and ``final/`` against their checksums (a one-line error
        naming a damaged file)."""
        self.check_progress(len(self.committed_rounds()) - 1, warn=False)
        final = self.path / "final"
        if read_manifest(final) is None:
            raise ConfigError(f"{final / MANIFEST}: missing (every adapter folder a run writes has one)")
        read_adapter_folder(final)

    def is_complete(self) -> bool:
        return (self.path / "summary.json").is_file()

    # -------------------------------------------------------------------- adapters
    def load_global(self, r: int) -> StateDict:
        return load_adapter_state(self.round_dir(r))

    # -------------------------------------------------------------------- metrics
    def append_metrics(self, rows: list[dict]) -> None:
        with open(self.metrics_file, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(_row_line(finite_json(row)))
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict]:
        """The rows of metrics.jsonl; a torn last line (a crash mid-write) is dropped with a warning, any other
        malformed line is a one-line error naming it."""
        if not self.metrics_file.is_file():
            return []
        try:
            lines = self.metrics_file.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError:
            raise DataError(self.metrics_file, "not UTF-8 text") from None
        rows = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:
                if i == len(lines):  # the last line, without its newline: a write cut short
                    log.warning("%s: line %d is cut short (a torn write); dropped", self.metrics_file, i)
                    break
                raise DataError(self.metrics_file, "invalid JSON", record=f"line {i}") from None
        return rows

    def rebuild_metrics(self, manifests: list[dict]) -> None:
        """metrics.jsonl as the committed rounds recorded it: rows of an uncommitted round (a crash mid-round) are
        dropped; a torn, damaged or missing file is rewritten from the manifests, with a warning."""
        text = "".join(_row_line(row) for m in manifests for row in m.get("rows", []))
        f = self.metrics_file
        old = f.read_bytes() if f.is_file() else None
        if old == text.encode():
            return
        if old is None:
            log.warning("%s: missing; rebuilt from the committed rounds' manifests", f)
        elif not old.startswith(text.encode()):
            log.warning("%s: differs from the committed rounds' records; rewritten from their manifests", f)
        elif not old.endswith(b"\n"):
            log.warning("%s: the last line is cut short (a torn write); dropped", f)
        write_atomic(f, text)
