"""Ctrl-C of the dashboard while an NVFlare parent waits for a job: `manage.py serve` is stopped with
SIGINT while the client's wait() is in a long poll, and started again on the same port and database.
wait() must not raise (NVFlare's waiting thread would die and the NVFlare job stay RUNNING for good)
and must return once the job has finished, with its return code."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from flare_launcher_client import FlareLauncherJobLauncher
from jobs.models import Job
from jobs.services.tokens import token_create
from tests.api.live import LiveServer
from tests.api.test_wait_live import server_has_read
from tests.util import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]


def server_ports(port: int) -> set[int]:
    """Client ports of the established connections the server holds now."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(local.split(":")[1], 16) == port and state == "01":
            ports.add(int(remote.split(":")[1], 16))
    return ports


def test_wait_survives_ctrl_c_of_the_dashboard_and_returns_when_the_job_ends(
        tmp_path, process_site, workspace, job_args, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="flare_launcher_client")
    _, secret = token_create(site=process_site)
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", secret)
    server = LiveServer(tmp_path)
    try:
        launcher = FlareLauncherJobLauncher(url=server.url, site="site-1", timeout=30)
        handle = launcher.launch_job({"job_id": "job-ctrl-c"}, {"job_process_args": job_args("job-ctrl-c"),
                                                                "set_options": ["sleep=12"]})
        assert handle.job["state"] == "running"
        launcher.client.session.close()  # so the long poll below comes on a new connection, found by its port
        wait_until(lambda: not server_ports(server.port), timeout=10, message="the launch connection to close")
        before = server_ports(server.port)
        outcome: dict = {}

        def wait():
            try:
                handle.wait()
                outcome["code"] = handle.poll()
            except BaseException as exc:  # noqa: BLE001 - what the test is about
                outcome["error"] = exc
            outcome["at"] = time.monotonic()

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        # The client's long poll is open on the server (a new connection whose request it has read).
        wait_until(lambda: (new := server_ports(server.port) - before) and server_has_read(server.port, new),
                   timeout=10, message="the client's long poll to be open")
        server.stop()  # SIGINT, as Ctrl-C: uvicorn's graceful shutdown, then the process exits
        assert "error" not in outcome, outcome
        assert waiter.is_alive(), outcome  # still waiting, the job is not finished
        server = LiveServer(tmp_path, port=server.port)  # same port, same database
        waiter.join(timeout=60)
        assert not waiter.is_alive(), "wait() did not return after the job ended"
    finally:
        server.stop()
        with_pid = (workspace / ".launcher" / "site-1-job-ctrl-c.json")
        if with_pid.exists() and json.loads(with_pid.read_text()).get("pid"):
            try:
                os.killpg(json.loads(with_pid.read_text())["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "error" not in outcome, outcome
    assert outcome["code"] == 0 and handle.job["state"] == "succeeded", (outcome, handle.job)
    assert Job.objects.get(job_id="job-ctrl-c").state == "succeeded"
    assert secret not in caplog.text
