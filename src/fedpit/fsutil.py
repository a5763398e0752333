"""Small file-system helpers: the one atomic-write helper, files holding private text, and checks that an output
place is writable.

Kept free of heavy imports, so the CLI can check its outputs before a model is loaded.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError

PRIVATE_MODE = 0o600
TMP_SUFFIX = ".tmp"  # every temporary file of an atomic write ends so (a run folder's listing skips them)


def _create_unique(path: Path, mode: int | None) -> tuple[int, Path]:
    """(fd, name) of a new, empty file next to ``path``, named ``.NAME.PID.RANDOM.tmp``; created with ``O_EXCL``
    (never an existing file, never one a symlink points to), so two writers, threads or processes, never share one.
    ``mode``: exactly this mode from creation (whatever the umask); None: the umask's default, as ``open`` gives."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}{TMP_SUFFIX}")
        try:
            fd = os.open(tmp, flags, 0o666 if mode is None else mode)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.fchmod(fd, mode)  # exactly this mode, whatever the umask (on the descriptor: never a window)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(f"{path}: no free temporary name next to it")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield the name of a new, empty temporary file next to ``path`` for a writer that wants a file name (such as
    safetensors' ``save_file``); when the block ends normally the file is synced and moved over ``path``
    (:func:`os.replace`), when it raises the temporary file is removed and ``path`` is left as it was.

    The temporary name is unique (see :func:`write_atomic`), so concurrent writers of one target never collide; the
    last one to finish wins, and a reader sees either the old file or one whole new one, never a torn one."""
    path = Path(path)
    fd, tmp = _create_unique(path, mode)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes, mode: int | None = None) -> Path:
    """Write ``data`` (``str``: as UTF-8, newlines as given) to ``path`` atomically; returns ``path``.

    The one way fedpit replaces a file: a new file with a unique name in the same folder
    (``.NAME.PID.RANDOM.tmp``, created with ``O_EXCL``), written, flushed and fsync-ed, then moved over ``path`` with
    :func:`os.replace`. A crash or an error leaves the old file (or none) and no temporary file; two writers of the
    same target never share a temporary name. ``mode``: the file's exact mode from creation (:data:`PRIVATE_MODE`
    for private data); None gives the umask's default, as a plain ``open`` would. The folder must exist."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = _create_unique(path, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_private_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, readable by the owner only (mode 600) from the start.

    For every file that holds private training text (synthetic instructions, extraction-attack rows): written by
    :func:`write_atomic` with :data:`PRIVATE_MODE`, so it is never world-readable, not even for a moment, and a crash
    leaves either the old file or the new one. Missing folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, text, PRIVATE_MODE)


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


__all__ = [
    "PRIVATE_MODE",
    "TMP_SUFFIX",
    "atomic_path",
    "check_writable_dir",
    "check_writable_file",
    "write_atomic",
    "write_private_text",
]
