"""Small file-system helpers: files holding private text, and checks that an output place is writable.

Kept free of heavy imports, so the CLI can check its outputs before a model is loaded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ConfigError

PRIVATE_MODE = 0o600


def write_private_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, readable by the owner only (mode 600) from the start.

    For every file that holds private training text (synthetic instructions, extraction-attack rows): the file is
    created by :func:`tempfile.mkstemp` (mode 600), then moved over ``path``, so it is never world-readable, not even
    for a moment, and a crash leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            os.fchmod(fh.fileno(), PRIVATE_MODE)
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise a one-line ConfigError unless ``path`` is a folder that can be created (if missing) and written to.

    Nothing is created: the nearest existing ancestor must be a folder in which a file can be made (tried with a
    temporary file, so read-only mounts and /proc are caught even for root)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what}: {path} exists and is not a folder")
    base = _nearest_existing(path.absolute())
    if not base.is_dir():
        raise ConfigError(f"{what}: cannot create {path}: {base} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise ConfigError(
            f"{what}: cannot write {path}: no file can be created in {base} ({e.strerror or e})"
        ) from None


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """Raise a one-line ConfigError unless a file can be written at ``path`` (its folder may not exist yet)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder, expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what}: {path} is not writable")
    check_writable_dir(path.parent, what)


__all__ = ["PRIVATE_MODE", "check_writable_dir", "check_writable_file", "write_private_text"]
