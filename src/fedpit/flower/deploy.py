"""Deployment helpers: TLS certificates, SuperNode keys, and a SuperLink + SuperNodes launcher for one machine.

Flower 1.41 and 1.42 facts this module relies on (checked on this platform):
- the SuperLink serves Fleet, Control and Runtime APIs on one port (``--host``/``--port``); each SuperNode on one
  host needs its own ``--port`` (its Runtime API); connections are named in ``$FLWR_HOME/config.toml``;
- a SuperLink or SuperNode whose port is taken exits at once ("address already in use"): the launcher then starts it
  again on another free port (a port found free can be taken by another process before Flower binds it);
- TLS: ``--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` (PKCS8 PEM key) on the SuperLink, ``--root-certificates``
  on SuperNodes, an absolute ``root-certificates`` path in config.toml. The certificate must name 127.0.0.1 because
  the SuperLink's own helper connects back to it;
- node authentication: ``--enable-supernode-auth`` on the SuperLink; ECDSA P-384 keys in OpenSSH format; a key is
  registered with ``flwr supernode register KEY.pub CONNECTION`` *before* the node starts. A node with an unknown
  key is refused at activation ("code: 2004") and exits;
- ``flwr`` CLI commands exit 0 even on failure: read ``--format json`` output instead;
- stopping: SIGTERM the roots, then whatever they spawned (serverapp/clientapp processes outlive their parents);
  every process is started in a session of its own, so what is left of one is found by its process group too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FedpitError
from ..fsutil import write_atomic

DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


# ---------------------------------------------------------------------------------------------------------- keys
def check_key_name(name: str) -> str:
    """A key's name must be a plain file name: it becomes ``OUT/NAME`` and ``OUT/NAME.pub``, never a path elsewhere."""
    if (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or any(c in name for c in "/\\\0")
        or name != name.strip()
        or not name.isprintable()
    ):
        raise FedpitError(
            f"key name {name!r} is not a plain file name (e.g. site-a; no '/', not '.' or '..', not empty)"
        )
    return name


def _prepare_out(out: Path, files: list[Path], force: bool) -> None:
    """Create the output folder and refuse (unless ``force``) to replace any of ``files``; all are checked before
    any key is made, so a refusal leaves nothing half-written."""
    if out.exists() and not out.is_dir():
        raise FedpitError(f"--out {out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FedpitError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    existing = [str(f) for f in files if f.exists() or f.is_symlink()]
    if existing and not force:
        raise FedpitError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; refusing to "
            "overwrite (a replaced key or certificate cannot be recovered): pass --force to replace"
        )


def _write(path: Path, data: bytes, private: bool = False, force: bool = False) -> None:
    """Write ``data`` to ``path``, created with mode 600 (``private``) or 644 from the start (never chmod-ed after).

    Without ``force`` the file must not exist (``O_EXCL``: a file created meanwhile is not clobbered either); with
    it, the old one is replaced atomically (:func:`fedpit.fsutil.write_atomic`)."""
    mode = 0o600 if private else 0o644
    if force:
        try:
            write_atomic(path, data, mode)
        except OSError as e:
            raise FedpitError(f"{path}: cannot write ({e.strerror or e})") from None
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise FedpitError(f"{path} already exists; refusing to overwrite it (pass --force to replace)") from None
    except OSError as e:
        raise FedpitError(f"{path}: cannot create ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # exactly this mode, whatever the umask
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise FedpitError(f"{path}: cannot write ({e.strerror or e})") from None


def _make_ca(start: dt.datetime, end: dt.datetime):
    """(key, name, certificate) of a fresh private CA valid from ``start`` to ``end``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpit deployment CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_name, ca


def make_certificates(
    out: str | Path, hosts: list[str] | tuple[str, ...] = (), days: int = 365, *, force: bool = False
) -> dict[str, Path]:
    """A private CA and a SuperLink certificate for ``hosts`` (plus 127.0.0.1, localhost, ::1).

    Writes ca.crt (give it to every SuperNode and to ``flwr``), ca.key (keep offline), server.pem and server.key
    (the SuperLink's), the keys with mode 600. Existing files are never replaced unless ``force``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out)
    files = {"ca_key": out / "ca.key", "ca": out / "ca.crt", "key": out / "server.key", "cert": out / "server.pem"}
    _prepare_out(out, list(files.values()), force)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def san(name: str):
        try:
            return x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            return x509.DNSName(name)

    ca_key, ca_name, ca = _make_ca(start, end)
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    srv_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    srv = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[3] if len(names) > 3 else "localhost")]))
        .issuer_name(ca_name)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([san(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(files["ca_key"], pem_key(ca_key), private=True, force=force)
    _write(files["ca"], ca.public_bytes(serialization.Encoding.PEM), force=force)
    _write(files["key"], pem_key(srv_key), private=True, force=force)
    _write(files["cert"], srv.public_bytes(serialization.Encoding.PEM), force=force)
    return files


def make_node_keys(
    out: str | Path, names: list[str] | tuple[str, ...], *, force: bool = False
) -> list[tuple[Path, Path]]:
    """An ECDSA P-384 key pair per name for SuperNode authentication: [(private key, public key)], OpenSSH format.

    Every name is checked (a plain file name, no repeats, no name that is another's ``.pub``) and every target file
    is checked for existence before the first key is written."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    names = [check_key_name(n) for n in names]
    if not names:
        raise FedpitError("no key names given")
    targets = [f for n in names for f in (n, f"{n}.pub")]
    repeated = sorted({t for t in targets if targets.count(t) > 1})
    if repeated:
        raise FedpitError(f"key names collide: {', '.join(repeated)} would be written twice")
    _prepare_out(out, [out / t for t in targets], force)
    made = []
    for name in names:
        key = ec.generate_private_key(ec.SECP384R1())
        priv = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(out / name, priv, private=True, force=force)
        _write(out / f"{name}.pub", pub + b"\n", force=force)
        made.append((out / name, out / f"{name}.pub"))
    return made


def make_node_key(out: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """One ECDSA P-384 key pair (see :func:`make_node_keys`): (private key, public key)."""
    return make_node_keys(out, [name], force=force)[0]


# ---------------------------------------------------------------------------------------------------------- processes
def free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port on 127.0.0.1 that is free now (and not in ``exclude``). Another process may take it before it is
    bound: :class:`LocalCluster` starts a process again on another port when that happens."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


PORT_TAKEN = "address already in use"  # what Flower's SuperLink and SuperNode log when their port is taken
PORT_TRIES = 5


def stop_tree(pids: list[int], grace: float = 10.0, groups: list[int] = (), since: float = 0.0) -> None:
    """SIGTERM ``pids`` and, after they exit (SIGINT/SIGKILL if they will not), everything they had spawned, and
    whatever is left in the process ``groups`` (a process started meanwhile, or re-parented, is found there)."""
    import psutil

    roots, desc = [], []
    for pid in pids:
        try:
            p = psutil.Process(pid)
        except psutil.NoSuchProcess:
            continue
        roots.append(p)
        desc.extend(p.children(recursive=True))  # before signalling: children are re-parented afterwards
    _stop_roots(roots, grace)
    desc += [p for p in _group_members(groups, since) if p not in desc]
    live = [p for p in desc if _alive(p)]
    for p in live:
        _signal(p, signal.SIGTERM)
    _, still = psutil.wait_procs(live, timeout=8)
    for p in still:
        _signal(p, signal.SIGKILL)


def _group_members(groups, since: float = 0.0) -> list:
    """The live processes of the given process groups (the sessions :class:`LocalCluster` started) that were
    started after ``since``."""
    import psutil

    if not groups:
        return []
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) in groups and p.pid != os.getpid() and p.create_time() >= since - 1:
                found.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _stop_roots(roots: list, grace: float) -> None:
    import psutil

    for p in roots:
        _signal(p, signal.SIGTERM)
    _, alive = psutil.wait_procs(roots, timeout=grace)
    for p in alive:  # uvicorn waits for attached clients; SIGINT after SIGTERM forces it
        _signal(p, signal.SIGINT)
    _, alive = psutil.wait_procs(alive, timeout=5)
    for p in alive:
        _signal(p, signal.SIGKILL)


def _signal(p, sig) -> None:
    import psutil

    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


@dataclass
class LocalCluster:
    """A SuperLink and N SuperNodes on 127.0.0.1, with TLS and node authentication by default.

    ``workdir`` receives certs/, keys/, logs/ and the Flower home (FLWR_HOME). Use as a context manager, or call
    :meth:`start` and :meth:`stop`. ``node_config`` adds keys to every node's ``--node-config``."""

    workdir: Path
    nodes: int = 3
    tls: bool = True
    auth: bool = True
    node_config: dict = field(default_factory=dict)
    connection: str = "fedpit-local"
    env: dict = field(default_factory=dict)
    executor: bool = True  # each site keeps its model loaded (`fedpit flower node`); False: a process per message
    threads: int = 0  # torch threads per site (0: the cores shared among the sites, at least 1)

    def __post_init__(self):
        self.workdir = Path(self.workdir).absolute()
        self.port = 0  # the SuperLink's, chosen when it starts (again, if another process took it first)
        self.node_ports: dict[int, int] = {}  # each node's Runtime API port, chosen each time the node starts
        self.superlink: subprocess.Popen | None = None
        self.node_procs: dict[int, subprocess.Popen] = {}
        self._groups: list[int] = []  # the sessions (process groups) this cluster started
        self._started_at = time.time()
        self._log_marks: dict[int, tuple[Path, int]] = {}  # node i: its log and where this start's output begins
        self._port_retries: dict[int, int] = {}
        self.home = self.workdir / "flwr-home"
        self.logs = self.workdir / "logs"

    # ------------------------------------------------------------------ setup
    def _env(self) -> dict:
        env = dict(os.environ)
        # Flower's processes start helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name: put this
        # environment's scripts first on PATH, so an unactivated virtualenv works too.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(
            {
                "FLWR_HOME": str(self.home),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "HF_HUB_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                **self.env,
            }
        )
        return env

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.logs / log, "ab") as fh:
            p = subprocess.Popen(
                args, stdout=fh, stderr=subprocess.STDOUT, env=self._env(), cwd=self.workdir, start_new_session=True
            )
        self._groups.append(p.pid)  # its own session: the process group's id is its pid
        return p

    def _free_port(self) -> int:
        return free_port({self.port, *self.node_ports.values()})

    @staticmethod
    def _port_taken(log: Path, offset: int) -> bool:
        """Whether the output a process wrote to ``log`` after ``offset`` says its port was taken."""
        try:
            with open(log, "rb") as fh:
                fh.seek(offset)
                return PORT_TAKEN in fh.read().decode(errors="replace")
        except OSError:
            return False

    def flwr(self, *args: str, timeout: float = 120.0) -> dict:
        """A ``flwr`` CLI call with ``--format json``; its parsed output (the CLI's exit code is always 0)."""
        try:
            out = subprocess.run(
                [_bin("flwr"), *args, "--format", "json"],
                capture_output=True,
                text=True,
                env=self._env(),
                cwd=self.workdir,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:  # e.g. another process holds the port and never answers
            return {"success": False, "error-message": f"flwr {' '.join(args)}: no answer within {timeout:.0f} s"}
        try:
            return json.loads(out.stdout[out.stdout.index("{") :])
        except ValueError:
            return {"success": False, "error-message": (out.stdout + out.stderr).strip()[-500:]}

    def start(self) -> LocalCluster:
        for d in (self.workdir, self.home, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._start_superlink(self._superlink_args())
        for i in range(self.nodes):
            if self.auth:
                self.register(i)
            self.start_node(i)
        self.wait_online(self.nodes)
        return self

    def _superlink_args(self) -> list[str]:
        """``flower-superlink`` with this cluster's options but ``--port`` (and the config.toml lines but the
        address, in ``self._conn``)."""
        link = [
            _bin("flower-superlink"),
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--database",
            str(self.workdir / "superlink.db"),
        ]
        self._conn = []
        if self.tls:
            self.certs = make_certificates(self.workdir / "certs", force=True)  # its own: remade each start
            link += ["--ssl-ca-certfile", str(self.certs["ca"]), "--ssl-certfile", str(self.certs["cert"])]
            link += ["--ssl-keyfile", str(self.certs["key"])]
            self._conn.append(f'root-certificates = "{self.certs["ca"]}"')
            if self.auth:
                link.append("--enable-supernode-auth")
        else:
            if self.auth:
                raise FedpitError("SuperNode authentication needs TLS (Flower refuses it with --insecure)")
            link.append("--insecure")
            self._conn.append("insecure = true")
        return link

    def _start_superlink(self, link: list[str]) -> None:
        """Start the SuperLink on a free port; on another if that one was taken before the SuperLink bound it."""
        log = self.logs / "superlink.log"
        for _ in range(PORT_TRIES):
            self.port = self._free_port()
            conn = [f'[superlink]\ndefault = "{self.connection}"\n', f"[superlink.{self.connection}]"]
            conn += [f'address = "127.0.0.1:{self.port}"', *self._conn]
            (self.home / "config.toml").write_text("\n".join(conn) + "\n", encoding="utf-8")
            offset = log.stat().st_size if log.exists() else 0
            self.superlink = self._spawn([*link, "--port", str(self.port)], log.name)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and self.superlink.poll() is None:
                time.sleep(0.5)
                if self.superlink.poll() is None and self.flwr("supernode", "list", self.connection, timeout=15).get(
                    "success"
                ):
                    return
            if self.superlink.poll() is None or not self._port_taken(log, offset):
                break
        raise FedpitError("the SuperLink did not come up (see logs/superlink.log)")

    def key(self, i: int, name: str | None = None) -> tuple[Path, Path]:
        priv = self.workdir / "keys" / (name or f"node{i}")
        return (
            (priv, priv.with_suffix(".pub"))
            if priv.exists()
            else make_node_key(self.workdir / "keys", name or f"node{i}")
        )

    def register(self, i: int) -> dict:
        res = self.flwr("supernode", "register", str(self.key(i)[1]), self.connection)
        if not res.get("success"):
            raise FedpitError(f"registering node {i} failed: {res}")
        return res

    def node_args(self, i: int, key_name: str | None = None, port: int | None = None) -> list[str]:
        cfg = {"partition-id": i, "num-partitions": self.nodes, **self.node_config}
        args = [
            _bin("flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.port}",
            "--port",
            str(port or self.node_ports.get(i) or self._free_port()),
            "--node-config",
            " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in cfg.items()),
        ]
        args += ["--root-certificates", str(self.certs["ca"])] if self.tls else ["--insecure"]
        if self.auth:
            args += ["--auth-supernode-private-key", str(self.key(i, key_name)[0])]
        return args

    def site_args(self, i: int, key_name: str | None = None, port: int | None = None) -> list[str]:
        """``fedpit flower node`` (SuperNode + executor) for site ``i``, or the bare SuperNode."""
        args = self.node_args(i, key_name, port)
        if not self.executor:
            return args
        threads = self.threads or max(1, (os.cpu_count() or 1) // max(1, self.nodes))
        site = self.workdir / "sites" / (key_name or f"node{i}")
        cmd = [sys.executable, "-m", "fedpit", "flower", "node", "--threads", str(threads), "--work-dir", str(site)]
        return [*cmd, "--", *args[1:]]

    def start_node(self, i: int, key_name: str | None = None) -> subprocess.Popen:
        """Start site ``i`` (with ``key_name``: an extra node, not kept in :attr:`node_procs`) on a fresh port."""
        log = self.logs / f"supernode{i}{'-' + key_name if key_name else ''}.log"
        offset = log.stat().st_size if log.exists() else 0
        port = self._free_port()
        p = self._spawn(self.site_args(i, key_name, port), log.name)
        if key_name is None:
            self.node_procs[i], self.node_ports[i], self._log_marks[i] = p, port, (log, offset)
        return p

    def _restart_port_clashes(self) -> None:
        """Start again, on another port, every node that exited because its port was taken meanwhile."""
        for i, p in list(self.node_procs.items()):
            if p.poll() is not None and i in self._log_marks and self._port_taken(*self._log_marks[i]):
                self._port_retries[i] = self._port_retries.get(i, 0) + 1
                if self._port_retries[i] > PORT_TRIES:
                    raise FedpitError(f"SuperNode {i}: no free port after {PORT_TRIES} tries (see {self.logs})")
                print(f"fedpit: SuperNode {i}'s port was taken; starting it on another port", file=sys.stderr)
                self.start_node(i)

    def kill_node(self, i: int) -> None:
        """SIGKILL a SuperNode and its ClientApp processes: a site that loses power mid-round."""
        import psutil

        p = self.node_procs.pop(i)
        try:
            kids = psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        for q in [psutil.Process(p.pid), *kids] if p.poll() is None else kids:
            _signal(q, signal.SIGKILL)
        p.wait(timeout=30)

    def kill_executor(self, i: int) -> int:
        """SIGKILL site ``i``'s executor (a crash mid-message); its supervisor starts a new one. Returns its PID."""
        import psutil

        for q in psutil.Process(self.node_procs[i].pid).children(recursive=True):
            if "executor" in q.cmdline():
                _signal(q, signal.SIGKILL)
                return q.pid
        raise FedpitError(f"site {i} has no executor process")

    def online(self) -> int:
        res = self.flwr("supernode", "list", self.connection, timeout=30)
        return sum(n.get("status") == "online" for n in res.get("nodes", []))

    def wait_online(self, n: int, timeout: float = 180) -> None:
        """Wait until ``n`` SuperNodes are online; a node whose port was taken before it bound it is started again."""

        def ready() -> bool:
            self._restart_port_clashes()
            return self.online() >= n

        self._wait(ready, timeout, f"fewer than {n} SuperNodes came online (see {self.logs})")

    @staticmethod
    def _wait(cond, timeout: float, message: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.5)
        raise FedpitError(message)

    # ------------------------------------------------------------------ runs
    def submit(self, app_dir: str | Path, run_config: dict | None = None) -> int:
        """Start the app in ``app_dir`` (a folder whose pyproject has [tool.flwr.app]); returns the run id."""
        args = ["run", str(app_dir), self.connection]
        for k, v in (run_config or {}).items():
            args += [
                "--run-config",
                f"{k}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}",
            ]
        res = self.flwr(*args, timeout=300)
        if not res.get("success") or "run-id" not in res:
            raise FedpitError(f"flwr run failed: {res}")
        return int(res["run-id"])

    def status(self, run_id: int) -> dict:
        res = self.flwr("list", "--run-id", str(run_id), self.connection, timeout=60)
        runs = res.get("runs") or [{}]
        return runs[0]

    def wait_run(self, run_id: int, timeout: float = 1800) -> dict:
        """Block until the run finishes; its ``flwr list`` record (``status``: finished:completed/failed/...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(run_id)
            if str(st.get("status", "")).startswith("finished"):
                return st
            time.sleep(2.0)
        raise FedpitError(f"run {run_id} did not finish within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the SuperLink and the sites, and whatever is left of any process this cluster started."""
        pids = [p.pid for p in self.node_procs.values() if p.poll() is None]
        if self.superlink is not None and self.superlink.poll() is None:
            pids.append(self.superlink.pid)
        stop_tree(pids, groups=self._groups, since=self._started_at)
        self.node_procs.clear()

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def repo_app_dir() -> Path:
    """The folder whose pyproject.toml declares the fedpit Flower app (the source checkout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        pp = parent / "pyproject.toml"
        if pp.is_file() and "[tool.flwr.app]" in pp.read_text(encoding="utf-8"):
            return parent
    raise FedpitError(
        "no pyproject.toml with [tool.flwr.app] above the fedpit package; run from a source checkout or pass --app DIR"
    )


__all__ = [
    "LocalCluster",
    "check_key_name",
    "free_port",
    "make_certificates",
    "make_node_key",
    "make_node_keys",
    "repo_app_dir",
    "stop_tree",
]
