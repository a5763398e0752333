"""``fedpit flower node``: one site's SuperNode and its long-lived executor, supervised together.

The SuperNode is Flower's own ``flower-supernode`` with Flower's default ``--isolation subprocess``: it starts a
``flwr-clientapp`` process for every message, as always. Beside it runs the site's executor
(:mod:`fedpit.flower.executor`, ``fedpit flower executor``), which keeps the backbone loaded; the ClientApp hands it
each message's work through a socket in the site's work folder (``$FEDPIT_SITE_DIR``, set here for the SuperNode and
everything it starts). If the executor dies (a crash, the out-of-memory killer) the message it held is answered with
an error at once (the server records the client as dropped for that round) and a new executor is started; if the
SuperNode exits, the executor is stopped and this command exits with the SuperNode's code. SIGTERM or SIGINT stops
both. This module imports neither torch nor flwr: the supervisor stays small.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger("fedpit.flower.node")


def _arg(args: list[str], name: str, default: str | None = None) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the supervisor dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def flower_command(name: str) -> str:
    """A Flower command of this environment (beside this Python), else from PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def executor_command(threads: int, task_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "fedpit", "flower", "executor", "--threads", str(threads)]
    return cmd + ["--parent-pid", str(os.getpid()), "--task-file", str(task_file)]


def site_env(work: Path) -> dict:
    """The SuperNode's environment: the site folder for its ClientApps, and this environment's scripts first on
    PATH (the SuperNode starts ``flower-superexec`` and ``flwr-clientapp`` by name)."""
    from .executor import SITE_ENV

    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env[SITE_ENV] = str(work)
    return env


def run_node(
    supernode_args: list[str], *, threads: int = 0, work_dir: str | Path | None = None, restart_delay_s: float = 1.0
) -> int:
    """Start ``flower-supernode ARGS`` and the site's executor; keep the executor running; return the SuperNode's
    exit code. ``work_dir`` (mode 700) holds the executor's socket and key, and ``task.json``, the message the
    executor is working on (its kind and round)."""
    from .executor import ensure_key

    if _arg(supernode_args, "--isolation") not in (None, "subprocess"):
        raise ConfigError(
            "fedpit flower node: the SuperNode starts its ClientApps itself (--isolation subprocess, Flower's "
            "default); leave --isolation out"
        )
    args = [a for a in supernode_args if a != "--"]
    if _arg(args, "--superlink") is None:  # flower-supernode would retry a default address for minutes
        raise ConfigError(
            "fedpit flower node: give the SuperLink's address after --, e.g. fedpit flower node -- --superlink "
            "HOST:9092 --root-certificates ca.crt --auth-supernode-private-key KEY --node-config 'partition-id=0'"
        )
    work = Path(work_dir).absolute() if work_dir else Path(tempfile.mkdtemp(prefix="fedpit-node-"))
    ensure_key(work)
    task_file = work / "task.json"
    supernode = [flower_command("flower-supernode"), *args]
    node = subprocess.Popen(supernode, env=site_env(work), preexec_fn=_die_with_parent)
    return _supervise(node, lambda: executor_command(threads, task_file), restart_delay_s)


def _supervise(node: subprocess.Popen, command, restart_delay_s: float) -> int:
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
                executor = subprocess.Popen(command(), preexec_fn=_die_with_parent)
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


__all__ = ["executor_command", "flower_command", "run_node", "site_env"]
