"""The long poll on a real server: 100 clients wait on one job at once, the server keeps answering
/healthz quickly meanwhile, and every waiter returns as soon as the job ends."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from jobs.services.tokens import token_create
from tests.api.conftest import launch_body
from tests.api.live import launcher_server  # noqa: F401  (fixture)
from tests.util import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]
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
