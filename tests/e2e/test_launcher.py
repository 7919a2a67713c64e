"""The launcher's service processes (shared/tools/launcher.py): forked from a server that imported the
services once, each is still a process of its own, with the environment, working directory,
session and log a fresh ``python -m shared.tools.cli`` would have had, and it dies and restarts
like one."""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from shared.tools.launcher import _service_context
from tests.e2e.conftest import started, tiny_pair

pytestmark = pytest.mark.skipif(_service_context() is None, reason="the platform has no forkserver")


def test_a_service_process_has_its_own_session_environment_directory_and_log(tmp_path, tiny_models_dir,
                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATENTWIRE_RECEIVER_MAX_BATCH", "5")  # the launcher's own: not the service's
    pair = tiny_pair(tmp_path / "pair", tiny_models_dir, {"LATENTWIRE_RECEIVER_MAX_BATCH": "7"})
    with started(pair):
        receiver = pair.receiver
        pid = receiver.proc.pid
        assert pid not in (os.getpid(), os.getppid())
        assert os.getsid(pid) == pid  # a session of its own: a terminal's Ctrl-C does not reach it
        assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path)
        assert httpx.get(receiver.url + "/v1/models", timeout=10).json()["max_batch"] == 7  # its environment
        assert "receiver ready" in receiver.log_path.read_text()

        receiver.kill()
        assert receiver.proc.poll() == -signal.SIGKILL
        receiver.start()  # a new process on the same port and store
        assert receiver.proc.pid != pid and receiver.proc.poll() is None
        assert httpx.get(receiver.url + "/readyz", timeout=10).status_code == 200
    assert pair.receiver.proc.poll() is not None and pair.sender.proc.poll() is not None
