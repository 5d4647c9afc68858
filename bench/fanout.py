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
import multiprocessing
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets  # noqa: E402

from bench.harness import Stack, process_stats, summary  # noqa: E402


async def client(url: str, cookie: str, origin: str, received: list, connected: list, stop_at: float) -> None:
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": origin},
                                  max_queue=None, open_timeout=60) as ws:
        connected.append(url)
        while time.time() < stop_at:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
            except asyncio.TimeoutError:
                continue
            now = time.time()  # wall clock: comparable with the driver's, which runs in another process
            message = json.loads(raw)
            if message.get("type") == "job.update":
                received.append((message["job"]["id"], message["job"]["state"], now))


def client_process(targets: list[tuple[str, str, str]], ready, start_at: float, stop_at: float, out) -> None:
    """One OS process holding a share of the websocket clients (one asyncio loop cannot parse
    25,000 messages a second on its own)."""

    async def run():
        received: list = []
        connected: list = []
        tasks = [asyncio.create_task(client(url, cookie, origin, received, connected, stop_at))
                 for url, cookie, origin in targets]
        while time.time() < start_at:
            await asyncio.sleep(0.05)
        ready.put(len(connected))
        await asyncio.gather(*tasks, return_exceptions=True)
        return received

    out.put(asyncio.run(run()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="job updates per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--client-procs", type=int, default=2, help="processes sharing the websocket clients")
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
        targets = []
        for i in range(args.clients):
            base = stack.urls[i % len(stack.urls)]
            cookie = f"sessionid={sessions[i % len(sessions)].cookies['sessionid']}"
            targets.append((base.replace("http://", "ws://") + "/ws/sites/site-1/jobs/", cookie, base))
        ctx = multiprocessing.get_context("spawn")
        ready, out = ctx.Queue(), ctx.Queue()
        start_at = time.time() + 15  # time for every client to connect before the updates start
        stop_at = start_at + args.seconds + 10
        procs = [ctx.Process(target=client_process, args=(targets[n::args.client_procs], ready, start_at, stop_at, out))
                 for n in range(args.client_procs)]
        for proc in procs:
            proc.start()
        connected = sum(ready.get(timeout=120) for _ in procs)
        print(f"{connected} clients connected in {len(procs)} client processes")

        sent: dict = {}
        cpu_before, _ = process_stats([p.pid for p in stack.procs])
        interval, started = 1 / args.rate, time.time()
        for n, (pk, state) in enumerate(plan):
            delay = started + n * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            sent[(pk, state)] = time.time()
            job_observe(job_pk=pk, state=state, source="watcher")
        elapsed = time.time() - started
        cpu_after, rss = process_stats([p.pid for p in stack.procs])
        received = [item for _ in procs for item in out.get(timeout=args.seconds + 120)]
        for proc in procs:
            proc.join(10)
        latencies = [(t - sent[(pk, state)]) * 1000 for pk, state, t in received if (pk, state) in sent]
        cpu_percent = (cpu_after - cpu_before) / elapsed * 100
        expected = len(plan) * args.clients
        print(f"\nfan-out: {args.clients} clients on {len(stack.urls)} web processes, {args.rate:.0f} updates/s "
              f"for {args.seconds:.0f} s ({len(plan)} updates)")
        print(f"  delivered {len(latencies)}/{expected} messages")
        print(f"  delivery latency  {summary(latencies)}")
        print(f"  web processes     CPU {cpu_percent:5.1f}% of one core (sum), RSS {rss:6.1f} MiB (sum)")


if __name__ == "__main__":
    main()
