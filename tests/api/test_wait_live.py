"""The long poll on a real server: 100 clients wait on one job at once, the server keeps answering
/healthz quickly meanwhile, and every waiter returns as soon as the job ends; `until=running`; and
open polls answered at once (200, never 500) when the server is stopped with Ctrl-C."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from jobs.services.tokens import token_create
from tests.api.conftest import launch_body
from tests.api.live import LiveServer, free_port
from tests.api.live import launcher_server as launcher_server_fixture
from tests.util import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]
launcher_server = launcher_server_fixture  # a fixture, shared with the other live tests
WAITERS = 100


def test_hundred_waiters_all_return_when_the_job_ends_and_health_stays_fast(launcher_server, process_site, job_args):
    _, secret = token_create(site=process_site)
    headers = {"Authorization": f"Token {secret}"}
    base = launcher_server.url
    body = launch_body("job-long", job_args("job-long"), set_options=["sleep=60"])
    job = requests.post(f"{base}/api/v1/jobs/", json=body, headers=headers, timeout=10).json()
    assert job["state"] == "queued", job

    def running():
        state = requests.get(f"{base}/api/v1/jobs/{job['id']}/", headers=headers, timeout=5).json()["state"]
        assert state in ("queued", "starting", "running"), (state, launcher_server.output())
        return state == "running"

    wait_until(running, timeout=30, interval=0.2, message="the job to run")

    def wait(_):
        started = time.monotonic()
        response = requests.get(f"{base}/api/v1/jobs/{job['id']}/wait/?timeout=55", headers=headers, timeout=70)
        return response.status_code, response.json().get("state"), time.monotonic() - started

    pool = ThreadPoolExecutor(max_workers=WAITERS)
    try:
        futures = [pool.submit(wait, i) for i in range(WAITERS)]
        # While all of them wait, the server still answers quickly (no thread is held per waiter).
        # The first second is the arrival burst (100 authentications on 2 shared cores); after it,
        # the waiters only hold subscriptions and the answers must be quick.
        samples: list[tuple[float, float]] = []  # (seconds since the waiters started, latency)
        window_start = time.monotonic()

        def sampled_enough():
            started = time.monotonic()
            health = requests.get(f"{base}/healthz", timeout=5)
            assert health.status_code == 200, health.text
            samples.append((started - window_start, time.monotonic() - started))
            return len(samples) >= 10 and time.monotonic() - window_start >= 4

        wait_until(sampled_enough, timeout=30, interval=0.2, message="health samples")
        assert not any(f.done() for f in futures), "a waiter returned before the job ended"
        threads = int(next(line.split()[1] for line in open(f"/proc/{launcher_server.proc.pid}/status")
                               if line.startswith("Threads:")))
        latencies = [latency for _, latency in samples]
        steady = [latency for at, latency in samples if at >= 1.5]
        assert max(latencies) < 5.0 and len(steady) >= 5 and max(steady) < 1.0, samples
        ended_at = time.monotonic()
        assert requests.post(f"{base}/api/v1/jobs/{job['id']}/terminate/", headers=headers, timeout=10).status_code == 202
        results = [f.result(timeout=30) for f in futures]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert [(code, state) for code, state, _ in results] == [(200, "aborted")] * WAITERS
    assert time.monotonic() - ended_at < 15
    print(f"\n{WAITERS} waiters; /healthz max {max(latencies) * 1000:.0f} ms during arrival, "
          f"{max(steady) * 1000:.0f} ms after; server threads while waiting: {threads}; "
          f"all returned {time.monotonic() - ended_at:.2f}s after terminate")


@pytest.fixture
def redis_url(tmp_path):
    """A throwaway redis-server on a free loopback port (Redis mode, for `serve --workers 2`)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                             "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    try:
        wait_until(answers, timeout=10, message="redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(10)


def server_has_read(port: int, client_ports: set[int]) -> bool:
    """The server's ends of these connections are established and their receive queues empty: the
    server process has read the requests sent on them (a real condition, instead of a sleep)."""
    seen = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if int(local.split(":")[1], 16) == port and state == "01" and int(queues.split(":")[1], 16) == 0:
            seen.add(int(remote.split(":")[1], 16))
    return client_ports <= seen


def open_long_poll(base: str, path: str, token: str) -> http.client.HTTPConnection:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=70)
    conn.request("GET", path, headers={"Authorization": f"Token {token}"})
    return conn


def kill_job(workspace: Path, job_id: str) -> None:
    """Leave no job process behind once its server is gone."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError, TypeError):
        os.killpg(json.loads((workspace / ".launcher" / f"site-1-{job_id}.json").read_text())["pid"], signal.SIGKILL)


@pytest.mark.parametrize("workers", [1, 2], ids=["embedded", "redis-2-workers"])
def test_open_long_polls_answer_at_once_with_the_job_when_the_server_is_stopped(
        workers, transactional_db, tmp_path, process_site, workspace, job_args, request):
    """Ctrl-C of `manage.py serve`: every open long poll is answered at once with the job as it is
    (200), never cancelled into a 500 when uvicorn's graceful period (5 s) runs out; with --workers 2
    (Redis mode) each worker process does the same."""
    _, secret = token_create(site=process_site)
    env, args = ({}, ()) if workers == 1 else ({"REDIS_URL": request.getfixturevalue("redis_url")}, ("--workers", "2"))
    server = LiveServer(tmp_path, env, args=args)
    polls: list[http.client.HTTPConnection] = []
    try:
        headers = {"Authorization": f"Token {secret}"}
        body = launch_body("job-stop", job_args("job-stop"), set_options=["sleep=60"])
        job = requests.post(f"{server.url}/api/v1/jobs/", json=body, headers=headers, timeout=10).json()
        # Embedded: the job runs; Redis mode has no worker here, so it stays queued. Either way the
        # polls below stay open until something ends them.
        wanted = "running" if workers == 1 else "queued"
        wait_until(lambda: requests.get(f"{server.url}/api/v1/jobs/{job['id']}/", headers=headers,
                                        timeout=5).json()["state"] == wanted, timeout=30, message=f"job {wanted}")
        until = ["terminal"] * 3 if workers == 1 else ["terminal", "running", "terminal", "running"]
        polls = [open_long_poll(server.url, f"/api/v1/jobs/{job['id']}/wait/?timeout=55&until={u}", secret)
                 for u in until]
        ports = {conn.sock.getsockname()[1] for conn in polls}
        wait_until(lambda: server_has_read(server.port, ports), timeout=10, message="the server to read the polls")
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        answers = []
        for conn in polls:
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read()).get("state"), time.monotonic() - stopped_at))
        server.proc.wait(timeout=30)
    finally:
        for conn in polls:
            conn.close()
        server.stop()
        kill_job(workspace, "job-stop")
    assert [(status, state) for status, state, _ in answers] == [(200, wanted)] * len(polls), answers
    assert max(after for _, _, after in answers) < 3.0, answers  # not held until the graceful period ends


def test_until_running_returns_once_the_job_runs_and_bad_values_are_a_400(launcher_server, process_site, job_args):
    _, secret = token_create(site=process_site)
    headers = {"Authorization": f"Token {secret}"}
    base = launcher_server.url
    body = launch_body("job-run", job_args("job-run"), set_options=["sleep=60"])
    job = requests.post(f"{base}/api/v1/jobs/", json=body, headers=headers, timeout=10).json()
    assert job["state"] == "queued"
    for bad in ("RUNNING", "started", "running,terminal"):
        refused = requests.get(f"{base}/api/v1/jobs/{job['id']}/wait/", params={"until": bad}, headers=headers,
                               timeout=10)
        assert refused.status_code == 400 and "until" in refused.json(), (bad, refused.text)
    started = time.monotonic()
    answer = requests.get(f"{base}/api/v1/jobs/{job['id']}/wait/?timeout=30&until=running", headers=headers,
                          timeout=40)
    assert answer.status_code == 200 and answer.json()["state"] == "running", answer.text
    assert time.monotonic() - started < 10
    # until=terminal (the default) still holds a running job until its timeout.
    held = requests.get(f"{base}/api/v1/jobs/{job['id']}/wait/?timeout=1", headers=headers, timeout=10)
    assert held.status_code == 200 and held.json()["state"] == "running"
    assert requests.post(f"{base}/api/v1/jobs/{job['id']}/terminate/", headers=headers, timeout=10).status_code == 202
    ended = requests.get(f"{base}/api/v1/jobs/{job['id']}/wait/?timeout=30&until=terminal", headers=headers, timeout=40)
    assert ended.json()["state"] == "aborted"
    # A terminal job counts as "no longer queued/starting": answered at once.
    started = time.monotonic()
    again = requests.get(f"{base}/api/v1/jobs/{job['id']}/wait/?timeout=30&until=running", headers=headers, timeout=40)
    assert again.json()["state"] == "aborted" and time.monotonic() - started < 5
