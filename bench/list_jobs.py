"""Job list API and overview page with 100,000 job records (PostgreSQL): p50/p99 latency of the
first page and of a filtered page, measured side by side in one run through a real server process.

    .venv/bin/python bench/list_jobs.py [--jobs 100000] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests  # noqa: E402

from bench.harness import Stack, summary  # noqa: E402

STATES = ["succeeded"] * 70 + ["failed"] * 15 + ["aborted"] * 5 + ["running"] * 5 + ["lost"] * 5


def seed(count: int) -> None:
    from django.utils import timezone

    from jobs.models import Job, Site

    sites = [Site.objects.create(name=f"site-{n}", backend="process") for n in (1, 2)]
    now = timezone.now()
    batch = []
    for i in range(count):
        state = random.choice(STATES)
        batch.append(Job(site=sites[i % 2], job_id=f"job-{i:06d}", backend="process", state=state,
                         study=f"study-{i % 20}", image="repo/nvflare:2.6", started_at=now, finished_at=now,
                         return_code={"succeeded": 0, "failed": 1, "aborted": 9, "lost": 9}.get(state)))
        if len(batch) == 5000:
            Job.objects.bulk_create(batch)
            batch = []
    Job.objects.bulk_create(batch)


def measure(session: requests.Session, url: str, n: int, **headers) -> list[float]:
    timings = []
    for _ in range(n):
        start = time.perf_counter()
        response = session.get(url, headers=headers, timeout=30)
        timings.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--overview", default="/sites/site-1/", help="path of the site's overview page")
    args = parser.parse_args()

    with Stack(name="list", web=1) as stack:
        os.environ.update(stack.env)
        import django

        django.setup()
        started = time.perf_counter()
        seed(args.jobs)
        print(f"seeded {args.jobs} jobs in {time.perf_counter() - started:.1f}s")
        stack.manage("dbshell", input="ANALYZE;\n")
        base = stack.urls[0]
        token = stack.site_token("site-1")
        api = requests.Session()
        browser = stack.login(base)
        auth = {"Authorization": f"Token {token}"}
        cases = [
            ("API first page", api, f"{base}/api/v1/jobs/?site=site-1", auth),
            ("API filtered page", api, f"{base}/api/v1/jobs/?site=site-1&state=failed&study=study-3", auth),
            ("overview first page", browser, f"{base}{args.overview}", {}),
            ("overview filtered", browser, f"{base}{args.overview}?state=failed&study=study-3", {}),
        ]
        for _, session, url, headers in cases:  # warm connections and caches
            measure(session, url, 5, **headers)
        results = {name: [] for name, *_ in cases}
        for _ in range(args.requests // 10):  # interleaved, so every case sees the same machine load
            for name, session, url, headers in cases:
                results[name] += measure(session, url, 10, **headers)
        print(f"\n{args.jobs} jobs, {args.requests} requests per case (one web process, PostgreSQL)")
        for name, timings in results.items():
            print(f"  {name:22s} {summary(timings)}")


if __name__ == "__main__":
    main()
