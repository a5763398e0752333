"""The one atomic-write helper (fedpit.fsutil): unique temporary names, whole files under concurrent writers, the old
file kept on failure, private files owner-only from creation, and no other place in src/ that replaces a file."""

from __future__ import annotations

import ast
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest
import torch

from fedpit import fsutil
from fedpit.adapters import load_state, save_state
from fedpit.fsutil import PRIVATE_MODE, atomic_path, write_atomic, write_private_text
from fedpit.rundir import read_json, write_json

SRC = Path(__file__).resolve().parents[1] / "src" / "fedpit"


def _payload(i: int) -> bytes:
    """Writer i's file: its number, then 256 KiB + i of one letter (large enough that a torn write would show)."""
    return f"{i:08d}".encode() + bytes([65 + i % 26]) * (256 * 1024 + i)


def _whole(data: bytes) -> bool:
    return data[:8].isdigit() and data == _payload(int(data[:8]))


def test_concurrent_threads_never_tear_lose_or_share_a_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "same.bin"
    write_atomic(target, _payload(0))
    used, real_replace = [], os.replace

    def spy_replace(src, dst):
        used.append(os.fspath(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy_replace)
    stop, bad = threading.Event(), []

    def reader():
        while not stop.is_set():
            data = target.read_bytes()  # never missing: os.replace swaps the name in one step
            if not _whole(data):
                bad.append(len(data))

    def writer(w):
        for j in range(15):
            write_atomic(target, _payload(w * 15 + j))

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    r.join()
    assert not bad
    assert len(used) == len(set(used)) == 90  # every write had its own temporary name
    assert all(Path(u).parent == tmp_path and Path(u).name.endswith(".tmp") for u in used)
    assert _whole(target.read_bytes())
    assert [p.name for p in tmp_path.iterdir()] == ["same.bin"]


def _process_writer(target: str, w: int) -> None:
    for j in range(10):
        write_atomic(target, _payload(w * 10 + j))
        write_json(Path(target).with_suffix(".json"), {"writer": w, "j": j, "pad": "x" * 50000})


def test_concurrent_processes_never_tear_or_lose_the_file(tmp_path):
    target = tmp_path / "same.bin"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_process_writer, args=(str(target), w)) for w in range(3)]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        if target.exists():
            assert _whole(target.read_bytes())
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert _whole(target.read_bytes()) and read_json(target.with_suffix(".json"))["j"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.bin", "same.json"]


def test_two_threads_saving_one_adapter_file_leave_a_loadable_one(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    states = [{"a": torch.full((64, 64), float(i)), "b": torch.full((8,), float(i))} for i in range(4)]

    def save(i):
        for _ in range(5):
            save_state(states[i], path, {"round": i})

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = load_state(path)
    assert any(torch.equal(got["a"], s["a"]) and torch.equal(got["b"], s["b"]) for s in states)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_json(path, {"old": 1})

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_json(path, {"new": 2})
    with pytest.raises(OSError, match="No space"):
        write_private_text(path, "new")
    monkeypatch.undo()
    assert read_json(path) == {"old": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    with pytest.raises(AttributeError):
        save_state({"a": "not a tensor"}, path)  # fails inside the block, after the temporary file exists
    assert read_json(path) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_private_files_are_600_from_creation_and_others_follow_the_umask(tmp_path, monkeypatch):
    created, real_open = [], os.open

    def spy_open(path, flags, mode=0o777, *a, **k):
        created.append((os.path.basename(path), flags, mode))
        return real_open(path, flags, mode, *a, **k)

    monkeypatch.setattr(os, "open", spy_open)
    old = os.umask(0)
    try:
        p = write_private_text(tmp_path / "sub" / "secret.jsonl", "x\n")
        write_private_text(p, "y\n")
        q = write_atomic(tmp_path / "plain.txt", "z")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == PRIVATE_MODE and p.read_text() == "y\n"
    assert stat.S_IMODE(q.stat().st_mode) == 0o666  # umask 0: as a plain open() would give
    private = [(f, m) for n, f, m in created if n.startswith(".secret.jsonl.")]
    assert len(private) == 2 and all(m == PRIVATE_MODE and f & os.O_EXCL for f, m in private)
    old = os.umask(0o022)
    try:
        assert stat.S_IMODE(write_atomic(tmp_path / "plain.txt", "z").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_temporary_names_are_unique_even_when_one_is_taken(tmp_path, monkeypatch):
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(fsutil.secrets, "token_hex", lambda n: next(names))
    (tmp_path / f".t.{os.getpid()}.aaaa.tmp").write_text("someone else's")
    write_atomic(tmp_path / "t", "mine")  # skips the taken name instead of clobbering it
    assert (tmp_path / "t").read_text() == "mine"
    assert (tmp_path / f".t.{os.getpid()}.aaaa.tmp").read_text() == "someone else's"


def test_no_module_but_fsutil_replaces_a_file_or_names_a_temporary_one():
    """Every atomic write goes through fsutil (the converted model folder in backbone.py is a directory, renamed into
    place once: a second converter finds it there)."""
    found = []
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("replace", "rename", "mkstemp") and (
                    node.func.attr != "replace" or getattr(node.func.value, "id", None) == "os"
                ):
                    found.append((rel, node.func.attr))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ".tmp" in node.value:
                found.append((rel, node.value))
    assert [f for f in found if f[0] != "fsutil.py"] == [("backbone.py", "rename")], found
