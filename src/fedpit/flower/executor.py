"""A site's long-lived executor: the backbone stays loaded between messages and runs.

Flower runs every ClientApp message in a fresh ``flwr-clientapp`` process, and offers no supported way to keep a
ClientApp process (or its model) across messages: ``Context.state`` holds records, a ``@app.lifespan`` wraps one
message, and with ``--isolation process`` the external ``flower-superexec`` still starts one ``flwr-clientapp`` per
message. So a site keeps its model in a process of its own: ``fedpit flower node`` starts the SuperNode (Flower's
default ``--isolation subprocess``) and this executor beside it. The ClientApp (:mod:`fedpit.flower.client_app`),
run by Flower as usual, hands each message's plain values to the executor over a local socket and turns the answer
into its reply; the executor runs :mod:`fedpit.flower.client_work` on them, whose caches (backbone and engine,
tokenized site data) live as long as the executor: across the messages of a run and across runs. The executor
imports nothing of Flower's; the ClientApp uses Flower's public API only.

The socket is a Unix socket in the site's work folder (mode 700), and both sides prove a shared key (``executor.key``,
mode 600) before a byte of a message crosses (``multiprocessing.connection``). The SuperNode's processes find the
folder in ``$FEDPIT_SITE_DIR``, which ``fedpit flower node`` sets. Requests are served one after another, as the
SuperNode hands out messages (it waits for each reply before taking the next message). If the executor dies during a
message, the ClientApp replies with an error at once (the server records the client as dropped for that round) and
the node's supervisor starts a new executor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("fedpit.flower.executor")

SITE_ENV = "FEDPIT_SITE_DIR"  # the site's work folder, set by `fedpit flower node` for the SuperNode's processes
KEY_FILE = "executor.key"
CONNECT_WAIT_S = 180.0  # how long a message waits for an executor that is (re)starting
CRASH_REASON = "fedpit executor: the site's executor stopped during this message (restarted; the site is back)"


def site_dir() -> Path | None:
    """The site's work folder when this process belongs to a SuperNode started by ``fedpit flower node``."""
    value = os.environ.get(SITE_ENV, "")
    return Path(value) if value else None


def socket_path(site: Path) -> str:
    """The executor's socket: in the site folder, or (a path too long for a Unix socket) a short name in the temp
    folder derived from it. Both sides compute the same path."""
    path = str(Path(site).absolute() / "executor.sock")
    if len(path.encode()) < 100:
        return path
    digest = hashlib.sha256(path.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"fedpit-{digest}.sock")


def ensure_key(site: Path) -> bytes:
    """The site's shared key (made once, mode 600, in a folder of mode 700)."""
    site = Path(site)
    site.mkdir(parents=True, exist_ok=True)
    site.chmod(0o700)
    f = site / KEY_FILE
    if not f.is_file():
        from ..fsutil import write_atomic

        write_atomic(f, secrets.token_bytes(32), mode=0o600)  # owner-only from the start
    return f.read_bytes()


def _connect(site: Path, wait_s: float):
    from multiprocessing.connection import Client

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Client(socket_path(site), family="AF_UNIX", authkey=(Path(site) / KEY_FILE).read_bytes())
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, EOFError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"fedpit executor: no executor answers at {site} ({type(e).__name__})") from None
            time.sleep(0.05)


def call(site: Path, req: dict, wait_s: float = CONNECT_WAIT_S) -> dict:
    """Run ``req`` in the site's executor; its answer, or the exception it raised (raised here)."""
    with _connect(site, wait_s) as conn:
        try:
            conn.send(req)
            ok, value = conn.recv()
        except (EOFError, OSError):  # the executor died with this message (a crash, the out-of-memory killer)
            raise RuntimeError(CRASH_REASON) from None
    if not ok:
        raise value
    return value


def _answer(conn, req: dict, task_file: Path | None) -> None:
    from . import client_work

    _note(task_file, req)
    try:
        out = (True, getattr(client_work, req["kind"])(req))
    except Exception as e:  # the ClientApp raises it, and Flower makes its usual error reply of it
        log.exception("the %s message failed", req.get("kind"))
        out = (False, _picklable(e))
    finally:
        if task_file is not None:
            task_file.unlink(missing_ok=True)
    try:
        conn.send(out)
    except OSError:  # the ClientApp's process is gone (Flower stopped it); nothing waits for this answer
        log.warning("the ClientApp left before the answer to its %s message", req.get("kind"))


def _picklable(e: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _note(task_file: Path | None, req: dict) -> None:
    """Write the message in progress (its kind and round; nothing of its content) while the executor works on it."""
    if task_file is None:
        return
    from ..fsutil import PRIVATE_MODE, write_atomic
    from .common import config_of

    _, r = config_of(req["config"])
    note = {"message_type": req["kind"], "round": r, "pid": os.getpid(), "since": time.time()}
    write_atomic(task_file, json.dumps(note), PRIVATE_MODE)


def _watch_parent(parent_pid: int) -> None:
    """Exit when the process that started this one is gone (the node's supervisor)."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="fedpit-parent-watch", daemon=True).start()


def serve(
    *,
    site: str | Path | None = None,
    threads: int = 0,
    parent_pid: int | None = None,
    task_file: str | Path | None = None,
    max_tasks: int = 0,
) -> None:
    """Serve the site's ClientApp requests until stopped (or ``max_tasks``). The site folder is ``site``, else the
    task file's folder, else ``$FEDPIT_SITE_DIR``. The executor never talks to Flower: its ClientApps do."""
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Listener

    folder = Path(site) if site else Path(task_file).parent if task_file else site_dir()
    if folder is None:
        raise RuntimeError(f"fedpit executor: no site folder (give --task-file, or set ${SITE_ENV})")
    key = ensure_key(folder)
    if parent_pid is not None:
        _watch_parent(parent_pid)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    from . import client_work  # noqa: F401  (torch, transformers, peft: imported once, before the first message)

    path = socket_path(folder)
    Path(path).unlink(missing_ok=True)  # a dead executor's socket
    task_file = Path(task_file) if task_file else None
    if task_file is not None:
        task_file.unlink(missing_ok=True)  # the note of a message a dead executor held (its ClientApp has answered)
    with Listener(path, family="AF_UNIX", authkey=key) as listener:
        os.chmod(path, 0o600)
        print(f"fedpit executor {os.getpid()}: serving {folder}", file=sys.stderr, flush=True)
        done = 0
        while not max_tasks or done < max_tasks:
            try:
                conn = listener.accept()
            except (AuthenticationError, OSError, EOFError) as e:  # a wrong key, or a caller that left
                log.warning("refused a connection: %s", e)
                continue
            with conn:
                try:
                    req = conn.recv()
                except (EOFError, OSError):
                    continue
                _answer(conn, req, task_file)
                done += 1


__all__ = ["CRASH_REASON", "SITE_ENV", "call", "ensure_key", "serve", "site_dir", "socket_path"]
