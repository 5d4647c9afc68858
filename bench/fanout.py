"""Websocket fan-out: 500 browsers watching one site over 2 web processes (Redis channel layer),
50 job updates per second applied through the one door (job_observe: a database write, then one
publish). Reports delivery latency (update applied -> message at the client) and the web
processes' CPU and memory. Loopback only; stops by itself.

    .venv/bin/python bench/fanout.py [--clients 500] [--rate 50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets  # noqa: E402

from bench.harness import Stack, process_stats, summary  # noqa: E402


async def client(url: str, cookie: str, origin: str, sent: dict, latencies: list, ready: asyncio.Event,
                 counter: list, stop: asyncio.Event) -> None:
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": origin},
                                  max_queue=None, open_timeout=30) as ws:
        counter[0] += 1
        if counter[0] == counter[1]:
            ready.set()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
            except asyncio.TimeoutError:
                continue
            received = time.perf_counter()
            message = json.loads(raw)
            if message.get("type") != "job.update":
                continue
            key = (message["job"]["id"], message["job"]["state"])
            if key in sent:
                latencies.append((received - sent[key]) * 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="job updates per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    with Stack(name="fanout", web=2) as stack:
        os.environ.update(stack.env)
        import django

        django.setup()
        from jobs.models import Job, Site
        from jobs.services.lifecycle import job_observe

        site = Site.objects.create(name="site-1", backend="process")
        updates = int(args.rate * args.seconds)
        jobs = Job.objects.bulk_create(
            [Job(site=site, job_id=f"fan-{i}", backend="process") for i in range(updates // 3 + 1)])
        plan = [(job.pk, state) for job in jobs for state in ("starting", "running", "succeeded")][:updates]

        sessions = [stack.login(url) for url in stack.urls]
        sent: dict = {}
        latencies: list[float] = []

        async def run() -> tuple[float, float]:
            ready, stop = asyncio.Event(), asyncio.Event()
            counter = [0, args.clients]
            tasks = []
            for i in range(args.clients):
                base = stack.urls[i % len(stack.urls)]
                cookie = f"sessionid={sessions[i % len(sessions)].cookies['sessionid']}"
                ws_url = base.replace("http://", "ws://") + "/ws/sites/site-1/jobs/"
                tasks.append(asyncio.create_task(client(ws_url, cookie, base, sent, latencies, ready, counter, stop)))
            await asyncio.wait_for(ready.wait(), timeout=120)
            print(f"{args.clients} clients connected")
            cpu_before, _ = process_stats([p.pid for p in stack.procs])

            def drive():
                interval = 1 / args.rate
                start = time.perf_counter()
                for n, (pk, state) in enumerate(plan):
                    delay = start + n * interval - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    sent[(pk, state)] = time.perf_counter()
                    job_observe(job_pk=pk, state=state, source="watcher")

            driver = threading.Thread(target=drive)
            started = time.perf_counter()
            driver.start()
            await asyncio.to_thread(driver.join)
            deadline = time.perf_counter() + 10
            while len(latencies) < len(plan) * args.clients and time.perf_counter() < deadline:
                await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            cpu_after, rss = process_stats([p.pid for p in stack.procs])
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            return (cpu_after - cpu_before) / elapsed * 100, rss

        cpu_percent, rss = asyncio.run(run())
        expected = len(plan) * args.clients
        print(f"\nfan-out: {args.clients} clients on {len(stack.urls)} web processes, {args.rate:.0f} updates/s "
              f"for {args.seconds:.0f} s ({len(plan)} updates)")
        print(f"  delivered {len(latencies)}/{expected} messages")
        print(f"  delivery latency  {summary(latencies)}")
        print(f"  web processes     CPU {cpu_percent:5.1f}% of one core (sum), RSS {rss:6.1f} MiB (sum)")


if __name__ == "__main__":
    main()
