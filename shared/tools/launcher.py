"""Start the receiver and sender as real processes on loopback ports, and stop them.

Used by ``latentwire demo``, ``latentwire bench e2e`` / ``bench link`` and the end-to-end tests: each service is
its own process running ``latentwire receiver|sender ...``, talking real HTTP, with its own store on disk.

Where the platform has it, each service process is forked from a server process that has already
imported the services (``multiprocessing``'s forkserver, started on first use): importing torch and
CompressAI costs seconds of CPU, once instead of at every start. The forked process is a process of
its own as much as a fresh interpreter would be: its own session, environment, working directory
and log file, killed and restarted like one.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.tools import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout_s:.0f} s (last answer: {last})")


@dataclass
class ServiceProcess:
    name: str
    args: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 120.0) -> None:
        self.spawn()
        self.wait_ready(ready_timeout_s)

    def spawn(self) -> None:
        """Start the process and return at once (``wait_ready`` waits for its /readyz)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        context = _service_context()
        if context is not None:
            process = context.Process(target=_serve, args=(self.args, self.env, str(self.log_path), os.getcwd()),
                                      name=self.name, daemon=True)
            process.start()
            self.proc = _Forked(process)
            return
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shared.tools.cli", *self.args], env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        wait_ready(self.url + "/readyz", self.proc, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the crash case (nothing flushed, no shutdown hooks)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


SERVICE_MODULES = ["shared.tools.cli", "receiver.app", "sender.app"]  # what the forkserver imports once


@functools.cache
def _service_context():
    """The forkserver context the services fork from, None where the platform has none."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(SERVICE_MODULES)
    return context


def _serve(args: list[str], env: dict[str, str], log_path: str, cwd: str) -> None:
    """A forked service process: what ``Popen([python, -m, shared.tools.cli, *args], env=env,
    cwd=cwd, stdout=log, stderr=log, start_new_session=True)`` would have started."""
    os.setsid()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout.reconfigure(line_buffering=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    from shared.tools.cli import main

    sys.exit(main(args))


class _Forked:
    """The calls this module makes on a ``subprocess.Popen``, for a forked ``multiprocessing.Process``."""

    def __init__(self, process: multiprocessing.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode  # negative: the signal that ended it, as Popen's

    def poll(self) -> int | None:
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            os.kill(self._process.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"service {self._process.name}", timeout)
        return self._process.exitcode


def service_env(secret: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a service process: ours minus any LATENTWIRE_* setting, plus the secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATENTWIRE_")}
    env.update({"LATENTWIRE_SECRET": secret, "PYTHONUNBUFFERED": "1"}, **(extra or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _model_args(model: str | None, models_dir: Path | None) -> list[str]:
    return [*(["--model", model] if model else []), *(["--models-dir", str(models_dir)] if models_dir else [])]


@dataclass
class Cluster:
    """Cluster mode's services (issue 22) as processes on loopback, around running engines: senders
    publishing to NATS JetStream, receivers that are workers of its consumer and keep their index in
    PostgreSQL and their objects in S3. Used by ``latentwire cluster`` and tests/cluster."""

    work_dir: Path
    secret: str
    broker_url: str
    database_url: str
    blob_url: str
    blob_endpoint_url: str | None = None
    s3_keys: tuple[str, str] | None = None  # (access key, secret key) for the S3 endpoint
    model: str | None = None
    models_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        extra = dict(self.extra_env)
        if self.s3_keys:
            extra.update(AWS_ACCESS_KEY_ID=self.s3_keys[0], AWS_SECRET_ACCESS_KEY=self.s3_keys[1])
        return service_env(self.secret, extra)

    def receiver(self, name: str, port: int = 0, extra_args: tuple[str, ...] = ()) -> ServiceProcess:
        port = port or free_port()
        endpoint = ["--blob-endpoint-url", self.blob_endpoint_url] if self.blob_endpoint_url else []
        return ServiceProcess(name, ["receiver", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                     "--store-dir", str(self.work_dir / name), "--broker-url", self.broker_url,
                                     "--database-url", self.database_url, "--blob-url", self.blob_url, *endpoint,
                                     *_model_args(self.model, self.models_dir), *extra_args],
                              self.env(), port, self.work_dir / "logs" / f"{name}.log")

    def sender(self, name: str, port: int = 0, extra_args: tuple[str, ...] = ()) -> ServiceProcess:
        port = port or free_port()
        return ServiceProcess(name, ["sender", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
                                     "--broker-url", self.broker_url, "--data-dir", str(self.work_dir / name),
                                     *_model_args(self.model, self.models_dir), *extra_args],
                              self.env(), port, self.work_dir / "logs" / f"{name}.log")


@dataclass
class ServicePair:
    """Receiver + sender on loopback with a shared secret and stores under ``work_dir``."""

    work_dir: Path
    secret: str
    model: str | None = None
    models_dir: Path | None = None
    device: str = "cpu"
    receiver_device: str | None = None  # default: ``device`` (a GPU sender may feed a CPU receiver)
    receiver_port: int = 0
    sender_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    # Where the sender sends its frames; default the receiver itself. A LinkEmulator's url puts a
    # thin link in between (bind the emulator to receiver_port first).
    receiver_url: str | None = None

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        env = service_env(self.secret, self.extra_env)
        model_args = _model_args(self.model, self.models_dir)
        rport = self.receiver_port or free_port()
        sport = self.sender_port or free_port()
        self.receiver = ServiceProcess(
            "receiver",
            ["receiver", "--host", "127.0.0.1", "--port", str(rport),
             "--store-dir", str(self.work_dir / "receiver"), "--device", self.receiver_device or self.device, *model_args],
            env, rport, self.work_dir / "logs" / "receiver.log",
        )
        self.sender = ServiceProcess(
            "sender",
            ["sender", "--host", "127.0.0.1", "--port", str(sport),
             "--receiver-url", self.receiver_url or f"http://127.0.0.1:{rport}",
             "--data-dir", str(self.work_dir / "sender"), "--device", self.device, *model_args],
            env, sport, self.work_dir / "logs" / "sender.log",
        )

    def start(self) -> "ServicePair":
        """Both processes start at once (each loads torch and its model meanwhile); this returns
        when both answer /readyz."""
        self.receiver.spawn()
        self.sender.spawn()
        self.receiver.wait_ready()
        self.sender.wait_ready()
        return self

    def stop(self) -> None:
        self.sender.stop()
        self.receiver.stop()

    def __enter__(self) -> "ServicePair":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
