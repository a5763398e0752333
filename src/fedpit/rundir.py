"""The run folder: everything a run writes, written so that a crash never leaves it looking complete.

Layout::

    config.toml            the resolved config (the run can be resumed from it alone)
    partition.json         which client holds which example
    metrics.jsonl          a row per client per round, and a row per round (kind = "round")
    rounds/round_NNN/      the global adapter after round NNN (peft folder; round_000 is the initial adapter);
                           its manifest.json is the round's commit record: the sha256 of every file the round
                           wrote (adapter, clients' state, ...), its metrics rows and the config fingerprint
    clients/client_K/      each simulated client's private state (never sent to the server), its outputs of
                           round NNN in round_NNN/, and its personalized adapter in final/ (peft folder)
    fingerprint.json       the settings that change the result, and their sha256 (resume refuses other settings)
    progress.json          last completed round and status (running / failed / complete)
    final/                 the final global adapter (peft folder + fedpit.json), only when complete
    summary.json           only when complete

A run's life is four calls, the same for every runtime: :meth:`RunDir.start` (or :meth:`RunDir.resume`), then
:meth:`RunDir.commit_round` after every round (round 0 is the initial adapter), then :meth:`RunDir.finish`.
Paths inside the folder come from :class:`RunDir` only. Adapter folders are written and read by
:mod:`fedpit.adapter_folder` only; each carries a ``manifest.json`` (sha256 of its files, :mod:`fedpit.manifest`),
verified when it is read.

A round is committed when its ``manifest.json`` names it (written atomically, last but for progress.json); resume
verifies every committed round's checksums, recovers progress.json and metrics.jsonl from the manifests, and never
deletes a committed round: what it cannot trust is a one-line error naming the file (exit code 2).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .adapter_folder import WEIGHTS, read_adapter_folder
from .adapters import StateDict, check_finite
from .errors import ConfigError, DataError
from .fsutil import TMP_SUFFIX, write_atomic
from .manifest import MANIFEST, finite_json, read_json, read_manifest, verify_manifest, write_json, write_manifest

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("fedpit.rundir")

FINGERPRINT = "fingerprint.json"
# the run folder's files, named here only (other modules take these names or RunDir's properties)
CONFIG_FILE = "config.toml"
PARTITION_FILE = "partition.json"
PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# settings that place or label a run but do not change what it computes: left out of the fingerprint
NOT_FINGERPRINTED = frozenset(
    {"output_dir", "run_name", "model.cache_dir", "model.device", "flower.wait_for_nodes_s", "flower.round_timeout_s"}
)
FAULT_ENV = "FEDPIT_FAULT_KILL"  # test hook: SIGKILL this process at the named fault point (see fault_point)
AdapterSaver = Callable[[Path, StateDict], None]  # writes one adapter folder (fedpit.adapter_folder)


def fault_point(name: str) -> None:
    """Kill this process (SIGKILL, as ``kill -9``) when ``$FEDPIT_FAULT_KILL`` names this point. The crash tests use
    it; the points are ``round_R_start``, ``round_R_client_K`` (after client K's update), ``commit_R_adapter``,
    ``commit_R_metrics`` and ``commit_R_manifest`` (after that step of round R's commit)."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


_warned: set[str] = set()


def warn_once(msg: str) -> None:
    """A warning about a run folder, printed once per process (resume checks a folder before and after the model
    loads)."""
    if msg not in _warned:
        _warned.add(msg)
        log.warning("%s", msg)


def _tag(r: int) -> str:
    """``round_NNN``: round ``r``'s name in the run folder."""
    return f"round_{r:03d}"


def _row_line(row: dict) -> str:
    return json.dumps(row, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------------------- checks
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


def _differing(stored: dict, want: dict) -> list[str]:
    """The keys whose values differ; a key a later version added, at its default, changes nothing."""
    from .config import Config as Defaults

    have = fingerprint(Defaults())["settings"] | stored
    return sorted(k for k in have.keys() | want.keys() if have.get(k, ...) != want.get(k, ...))


def fingerprint_of(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


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
                os.close(os.open(p / CONFIG_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
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
        write_json(path / PARTITION_FILE, partition)
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
            and (self.round_dir(0) / WEIGHTS).is_file()
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
        write_json(self.summary_file, summary)
        self.set_progress(status="complete", completed_rounds=rounds)

    # -------------------------------------------------------------------- layout
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def partition_file(self) -> Path:
        return self.path / PARTITION_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    def round_dir(self, r: int) -> Path:
        return self.path / "rounds" / _tag(r)

    @property
    def final(self) -> Path:
        """The final global adapter's folder."""
        return self.path / "final"

    def client_dir(self, client: int | str) -> Path:
        """``clients/client_K/``: client K's own folder (``"*"``: a glob pattern for every client's)."""
        return self.path / "clients" / f"client_{client}"

    def client_final(self, client: int) -> Path:
        """The client's personalized adapter folder (written when the run ends)."""
        return self.client_dir(client) / "final"

    def client_round_dir(self, client: int, r: int) -> Path:
        """The client's local outputs of round ``r`` (synthetic data, ...), on its own disk."""
        return self.client_dir(client) / _tag(r)

    def client_outputs(self, client: int | None = None, r: int | None = None) -> list[Path]:
        """The files in clients' round folders (``clients/client_K/round_NNN/**``): of every client unless
        ``client`` is given, of every round unless ``r`` is."""
        folder = self.client_dir("*" if client is None else client).relative_to(self.path)
        tag = "round_*" if r is None else _tag(r)
        return [p for p in self.path.glob(f"{folder}/{tag}/**/*") if p.is_file()]

    def client_state_file(self, client: int | str, r: int) -> Path:
        return self.client_dir(client) / f"state.{_tag(r)}.safetensors"

    def latest_client_state(self, client: int, at_most: int) -> Path | None:
        """The client's private state as of round ``at_most`` (it is written only in rounds the client trained)."""
        folder = self.client_dir(client)
        found = sorted((int(f.name.split("_")[1].split(".")[0]), f) for f in folder.glob("state.round_*.safetensors"))
        found = [f for r, f in found if r <= at_most]
        return found[-1] if found else None

    def round_files(self, r: int) -> list[str]:
        """Every file round ``r`` wrote in this folder (relative paths): its global adapter, the clients' private
        state and local outputs, its extraction rows; round 0 also the partition."""
        tag = _tag(r)
        found = [p for p in self.round_dir(r).iterdir() if p.name != MANIFEST]
        found += self.path.glob(str(self.client_state_file("*", r).relative_to(self.path)))
        found += self.client_outputs(r=r)
        found += self.path.glob(f"extraction/shared_{tag}.jsonl")
        if r == 0:
            found.append(self.partition_file)
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
        f = self.path / PROGRESS_FILE
        try:
            p = read_json(f)
        except (OSError, ValueError, UnicodeDecodeError):
            p = None
        return p if isinstance(p, dict) else {"completed_rounds": -1, "status": "new"}

    def set_progress(self, **kw) -> None:
        data = self.progress() | kw
        write_json(self.path / PROGRESS_FILE, data)

    def check_progress(self, done: int, *, warn: bool = True) -> None:
        """Cross-check progress.json with the committed rounds (``done`` is the last one): it may lag behind them
        (a crash after the commit record) or be missing or damaged (recovered, with a warning), but it may not
        claim a round whose commit record is gone."""
        f = self.path / PROGRESS_FILE
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
            diff = _differing(stored["settings"], want["settings"])
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

    def other_settings(self, cfg: Config) -> list[str] | None:
        """The keys whose values differ between ``cfg`` and the settings this run started with (its
        ``fingerprint.json``, else its ``config.toml``); None when neither can be read."""
        try:
            stored = read_json(self.path / FINGERPRINT)
            settings = stored["settings"] if isinstance(stored, dict) else None
        except (OSError, ValueError, UnicodeDecodeError, KeyError):
            settings = None
        if not isinstance(settings, dict):
            from .config import load_config

            try:
                settings = fingerprint(load_config(self.config_file))["settings"]
            except (OSError, ValueError, ConfigError):
                return None
        return _differing(settings, fingerprint(cfg)["settings"])

    def verify_complete(self) -> None:
        """A complete run's adapters: every committed round and ``final/`` against their checksums (a one-line error
        naming a damaged file)."""
        self.check_progress(len(self.committed_rounds()) - 1, warn=False)
        if not (self.final / MANIFEST).is_file():
            raise ConfigError(f"{self.final / MANIFEST}: missing (every adapter folder a run writes has one)")
        read_adapter_folder(self.final)

    def is_complete(self) -> bool:
        return self.summary_file.is_file()

    # -------------------------------------------------------------------- adapters
    def load_global(self, r: int) -> StateDict:
        """Round ``r``'s global adapter (a committed round: its checksums were verified when the run was resumed)."""
        return read_adapter_folder(self.round_dir(r), verify=False).state

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
