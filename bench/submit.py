"""Submit throughput: accepted job submissions per second through POST /api/v1/jobs/ with a
realistic NVFlare payload, on two web processes (PostgreSQL + Redis), and the same with 20
duplicates of each job arriving at once (idempotency must not cost a table lock). No worker runs:
this measures acceptance (validate, record, enqueue), not container start-up.

    .venv/bin/python bench/submit.py [--jobs 600] [--threads 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench.harness import Stack, summary  # noqa: E402


def payload(job_id: str) -> dict:
    """What NVFlare's client parent sends: job meta and JOB_PROCESS_ARGS (with bootstrap credentials)."""
    ws = "/var/tmp/nvflare/workspace"
    return {
        "site": "site-1",
        "job_id": job_id,
        "role": "client",
        "job_meta": {
            "job_id": job_id,
            "name": "hello-pt",
            "study": "",
            "resource_spec": {"site-1": {"num_of_gpus": 0}},
            "launcher_spec": {"default": {"process": {}}},
        },
        "job_args": {
            "exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
            "workspace": ["-m", ws],
            "startup_dir": ["-w", f"{ws}/startup"],
            "job_id": ["-n", job_id],
            "client_name": ["-c", "site-1"],
            "parent_url": ["-p", "tcp://localhost:8004"],
            "parent_conn_sec": ["--parent_conn_sec", "clear"],
            "scheme": ["-scheme", "tcp"],
            "target": ["-g", "localhost:8002"],
            "startup_config_file": ["-s", "fed_client.json"],
            "auth_token": ["-t", uuid.uuid4().hex],
            "auth_signature": ["-ts", uuid.uuid4().hex],
            "ssid": ["-d", uuid.uuid4().hex],
        },
    }


def post_all(urls: list[str], token: str, job_ids: list[str], threads: int) -> tuple[float, list[float], dict]:
    sessions = {}
    timings: list[float] = []
    statuses: dict[int, int] = {}

    def post(i_job):
        i, job_id = i_job
        base = urls[i % len(urls)]
        session = sessions.setdefault((base, i % threads), requests.Session())
        start = time.perf_counter()
        response = session.post(f"{base}/api/v1/jobs/", json=payload(job_id), timeout=60,
                                headers={"Authorization": f"Token {token}"})
        timings.append((time.perf_counter() - start) * 1000)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(post, enumerate(job_ids)))
    return time.perf_counter() - started, timings, statuses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    with Stack(name="submit", web=2) as stack:
        workspace = Path(stack.env["LAUNCHER_VAR_DIR"]) / "ws"
        workspace.mkdir(parents=True, exist_ok=True)
        stack.shell("from jobs.services.catalog import site_create; "
                    f"site_create(name='site-1', backend='process', process={{'workspace': '{workspace}'}})")
        token = stack.site_token("site-1")

        unique = [f"u-{uuid.uuid4()}" for _ in range(args.jobs)]
        elapsed, timings, statuses = post_all(stack.urls, token, unique, args.threads)
        print(f"\nunique submissions: {args.jobs} in {elapsed:.1f}s = {statuses.get(201, 0) / elapsed:6.1f} accepted/s "
              f"{statuses}  latency {summary(timings)}")

        distinct = max(1, args.jobs // 20)
        dup_ids = [f"d-{i}" for i in range(distinct) for _ in range(20)]
        elapsed, timings, statuses = post_all(stack.urls, token, dup_ids, args.threads)
        print(f"20 duplicates each: {len(dup_ids)} requests for {distinct} jobs in {elapsed:.1f}s = "
              f"{len(dup_ids) / elapsed:6.1f} answered/s {statuses}  latency {summary(timings)}")

        os.environ.update(stack.env)
        import django

        django.setup()
        from jobs.models import Job

        created = Job.objects.filter(job_id__startswith="d-").count()
        print(f"jobs recorded for the duplicated ids: {created} (expected {distinct})")


if __name__ == "__main__":
    main()
