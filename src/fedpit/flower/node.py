"""``fedpit flower node``: one site's SuperNode and its long-lived ClientApp executor, supervised together.

The SuperNode runs with ``--isolation process`` (it serves its Runtime API and launches nothing); the executor
(:mod:`fedpit.flower.executor`, ``fedpit flower executor``) takes its ClientApp tasks and keeps the backbone loaded.
If the executor dies (a crash, the out-of-memory killer) it is started again and the message it held is answered by
the SuperNode with an error once its task heartbeat lapses (the server records the client as dropped for that round);
if the SuperNode exits, the executor is stopped and this command exits with the SuperNode's code. SIGTERM or SIGINT
stops both. This module imports neither torch nor flwr: the supervisor stays small.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger("fedpit.flower.node")
DEFAULT_RUNTIME_PORT = 9094  # flower-supernode's --port default (its Runtime API)


def _arg(args: list[str], name: str, default: str | None = None) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def runtime_address(supernode_args: list[str]) -> str:
    """The SuperNode's Runtime API address from its arguments (``--host``, ``--port``)."""
    host = _arg(supernode_args, "--host", "127.0.0.1")
    port = _arg(supernode_args, "--port", str(DEFAULT_RUNTIME_PORT))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def executor_command(address: str, threads: int, root_certificates: str | None, task_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "fedpit", "flower", "executor", "--runtime-api-address", address]
    cmd += ["--threads", str(threads), "--parent-pid", str(os.getpid()), "--task-file", str(task_file)]
    return cmd + (["--root-certificates", root_certificates] if root_certificates else [])


def run_node(
    supernode_args: list[str], *, threads: int = 0, work_dir: str | Path | None = None, restart_delay_s: float = 1.0
) -> int:
    """Start ``flower-supernode --isolation process ARGS`` and the executor; keep the executor running; return the
    SuperNode's exit code. ``work_dir`` (mode 700) holds ``task.json``, the message in progress (token and header),
    which a restarted executor answers with an error at once."""
    if _arg(supernode_args, "--isolation") not in (None, "process"):
        raise ConfigError("fedpit flower node: the SuperNode runs with --isolation process (leave --isolation out)")
    args = [a for a in supernode_args if a != "--"]
    if _arg(args, "--superlink") is None:  # flower-supernode would retry a default address for minutes
        raise ConfigError(
            "fedpit flower node: give the SuperLink's address after --, e.g. fedpit flower node -- --superlink "
            "HOST:9092 --root-certificates ca.crt --auth-supernode-private-key KEY --node-config 'partition-id=0'"
        )
    if _arg(args, "--isolation") is None:
        args = ["--isolation", "process", *args]
    address = runtime_address(args)
    certs = _arg(args, "--ssl-ca-certfile")  # a Runtime API served over TLS
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="fedpit-node-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o700)
    task_file = work / "task.json"
    node = subprocess.Popen([sys.executable, "-m", "fedpit.flower.supernode", *args], preexec_fn=_die_with_parent)
    executor = None
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and node.poll() is None:
            if executor is None or executor.poll() is not None:
                if executor is not None:
                    print(f"fedpit node: executor exited with {executor.returncode}; restarting", file=sys.stderr)
                    time.sleep(restart_delay_s)
                executor = subprocess.Popen(
                    executor_command(address, threads, certs, task_file), preexec_fn=_die_with_parent
                )
            time.sleep(0.2)
    finally:
        for p in (executor, node):
            if p is not None and p.poll() is None:
                p.terminate()
        for p in (executor, node):
            if p is not None:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0 if stopping else int(node.returncode or 0)


__all__ = ["executor_command", "run_node", "runtime_address"]
