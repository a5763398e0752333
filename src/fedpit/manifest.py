"""Checksummed files: JSON written atomically and always valid, and ``manifest.json``, the sha256 of a set of files.

Every adapter folder carries a manifest (:mod:`fedpit.adapter_folder`), and so does every committed round of a run
folder (its commit record, :mod:`fedpit.rundir`); both are written and checked here. Light imports only.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError
from .fsutil import write_atomic

MANIFEST = "manifest.json"


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


def parse_json(path: Path, data: bytes, what: str):
    """The JSON in ``data`` (the bytes of ``path``); a one-line error naming ``path`` when it is malformed."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: malformed {what} ({str(e).splitlines()[0][:80]})") from None


def read_json_file(path: Path, what: str):
    """A JSON file the run wrote; a one-line error naming it when it is unreadable."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing ({what})") from None
    return parse_json(path, data, what)


# ---------------------------------------------------------------------------------------------------------- sha256
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------- manifests
def write_manifest(folder: Path, files: list[str], base: str = ".", **extra) -> None:
    """``folder/manifest.json``: the sha256 of ``files`` (paths relative to ``folder/base``), written atomically."""
    root = folder / base
    body = finite_json({"base": base, **extra, "files": {f: sha256_file(root / f) for f in files}})
    write_json(folder / MANIFEST, {**body, "sha256": _self_sha256(body)})


def _self_sha256(body: dict) -> str:
    """A manifest's checksum of itself (every key but ``sha256``), so a damaged manifest is found, not believed."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, allow_nan=False).encode()).hexdigest()


def parse_manifest(f: Path, data: bytes) -> dict:
    """The manifest in ``data`` (the bytes of ``f``); a one-line error when it is damaged."""
    m = parse_json(f, data, "manifest")
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


def read_manifest(folder: Path) -> dict | None:
    """``folder/manifest.json`` (None when there is none); a one-line error when it is damaged."""
    f = Path(folder) / MANIFEST
    return parse_manifest(f, f.read_bytes()) if f.is_file() else None


def verify_manifest(
    folder: Path, m: dict, *, inside_only: bool = False, digests: Mapping[str, str] | None = None
) -> None:
    """Every file ``m`` lists exists with its recorded sha256; a one-line error naming the first that does not.
    ``inside_only``: only the files directly in ``folder``; ``digests``: the sha256 of files of ``folder`` already
    read (by name), so that they are not read again."""
    folder = Path(folder)
    root = folder / m["base"]
    for rel, digest in m["files"].items():
        p = root / rel
        inside = p.resolve().parent == folder.resolve()
        if inside_only and not inside:
            continue
        known = (digests or {}).get(p.name) if inside else None
        if known is None and not p.is_file():
            raise ConfigError(f"{p}: missing (listed in {folder / MANIFEST}); restore it")
        if (known or sha256_file(p)) != digest:
            raise ConfigError(
                f"{p}: checksum mismatch: the file changed after it was written (sha256 in {folder / MANIFEST}); "
                "restore it"
            )


__all__ = [
    "MANIFEST",
    "finite_json",
    "parse_json",
    "parse_manifest",
    "read_json",
    "read_json_file",
    "read_manifest",
    "sha256_bytes",
    "sha256_file",
    "verify_manifest",
    "write_json",
    "write_manifest",
]
