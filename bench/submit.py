"""Submit throughput: accepted job submissions per second through POST /api/v1/jobs/ with a
realistic NVFlare payload, on two web processes (PostgreSQL + Redis), and the same with 20
duplicates of each job arriving at once (idempotency must not cost a table lock). No worker runs:
this measures acceptance (validate, record, audit, publish, enqueue), not container start-up.

    apt-get install -y wrk   # once: the load generator
    .venv/bin/python bench/submit.py [--seconds 15] [--connections 8]

The load comes from wrk (one per web process, each one thread and --connections connections),
because a load generator in Python would take most of the CPU the two web processes need on this
2-core machine. bench/submit.lua builds each request: the NVFlare client parent's payload with
fresh credentials, a new job id per request, or (duplicates) the same id for 20 consecutive
requests, which the thread sends at once over its connections. With BENCH_PYSPY=1 (and py-spy on
PATH) each web process is sampled during the unique run (GIL holders only) into /tmp/spy-N.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import Stack  # noqa: E402

LUA = Path(__file__).resolve().parent / "submit.lua"


def run_wrk(urls: list[str], token: str, *, copies: int, seconds: int, connections: int, prefix: str) -> dict:
    """One wrk per web process, all at once; their status counts summed."""
    procs = []
    for n, url in enumerate(urls):
        env = {**os.environ, "SUBMIT_TOKEN": token, "SUBMIT_PREFIX": f"{prefix}{n}", "SUBMIT_COPIES": str(copies)}
        procs.append(subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
                                       "-s", str(LUA), url], env=env, stdout=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        line = next((l for l in out.splitlines() if l.startswith("WRK ")), None)
        if line is None:
            raise SystemExit(f"wrk printed no result:\n{out}")
        results.append(json.loads(line[4:]))
    statuses: dict[str, int] = {}
    for result in results:
        for code, count in result["statuses"].items():
            statuses[code] = statuses.get(code, 0) + count
    return {"statuses": statuses, "seconds": max(r["seconds"] for r in results),
            "p50_ms": max(r["p50_ms"] for r in results), "p99_ms": max(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=8, help="per web process")
    parser.add_argument("--web", type=int, default=2, help="web processes")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")

    with Stack(name="submit", web=args.web) as stack:
        workspace = Path(stack.env["LAUNCHER_VAR_DIR"]) / "ws"
        workspace.mkdir(parents=True, exist_ok=True)
        stack.shell("from jobs.services.catalog import site_create; "
                    f"site_create(name='site-1', backend='process', process={{'workspace': '{workspace}', 'allow_root': True}})")
        token = stack.site_token("site-1")
        run_wrk(stack.urls, token, copies=1, seconds=2, connections=2, prefix="warm")  # imports, pools, caches

        spies = [subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "-d", str(args.seconds), "-r", "200",
                                   "-f", "raw", "-o", f"/tmp/spy-{n}.txt", "--gil"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                 for n, proc in enumerate(stack.procs)] if os.environ.get("BENCH_PYSPY") else []
        unique = run_wrk(stack.urls, token, copies=1, seconds=args.seconds, connections=args.connections, prefix="u")
        for spy in spies:
            spy.wait(60)
        accepted = unique["statuses"].get("201", 0)
        print(f"\nunique submissions: {accepted / unique['seconds']:6.1f} accepted/s ({accepted} in "
              f"{unique['seconds']:.1f} s) statuses {unique['statuses']} errors {unique['errors']}  "
              f"latency p50 {unique['p50_ms']:.0f} ms p99 {unique['p99_ms']:.0f} ms")

        dups = run_wrk(stack.urls, token, copies=20, seconds=args.seconds, connections=args.connections, prefix="d")
        answered = sum(dups["statuses"].values())
        print(f"20 duplicates each: {answered / dups['seconds']:6.1f} answered/s ({answered} in {dups['seconds']:.1f} s) "
              f"statuses {dups['statuses']} errors {dups['errors']}  "
              f"latency p50 {dups['p50_ms']:.0f} ms p99 {dups['p99_ms']:.0f} ms")

        os.environ.update(stack.env)
        import django

        django.setup()
        from jobs.models import Job

        ids = Job.objects.filter(job_id__startswith="d").count()
        created = dups["statuses"].get("201", 0)
        # wrk stops with requests in flight: their jobs are recorded, their 201s are not counted.
        in_flight = args.connections * len(stack.urls)
        ok = created <= ids <= created + in_flight
        print(f"duplicated ids recorded: {ids}; 201 answers: {created} (+ up to {in_flight} cut off by wrk's stop): "
              f"{'one job per id' if ok else 'MISMATCH: a duplicate was created or lost'}")


if __name__ == "__main__":
    main()
