"""Websocket fan-out: 500 browsers watching one site over 2 web processes (Redis channel layer),
50 job updates per second applied through the one door (job_observe: a database write, then one
publish). Reports delivery latency (update applied -> message at the client) and the web
processes' CPU and memory, and the load generator's (clients and driver share the 2 cores).
Loopback only; stops by itself. Frames carrying several updates (`job.updates`, see jobs.events)
count every update in them.

    .venv/bin/python bench/fanout.py [--clients 500] [--rate 50] [--seconds 30]

BENCH_BUCKETS=1 adds p50/p99 per second of the run (where the tail comes from); BENCH_PYSPY=1
(py-spy on PATH) samples each web process's GIL holder during the run into /tmp/fanout-spy-N.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets  # noqa: E402

from bench.harness import Stack, process_stats, summary  # noqa: E402


async def client(url: str, cookie: str, origin: str, received: list, connected: list, stop_at: float,
                 frames: list) -> None:
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
            frames[0] += message.get("type") in ("job.update", "job.updates")
            for update in message["updates"] if message.get("type") == "job.updates" else [message]:
                if update.get("type") == "job.update":
                    received.append((update["job"]["id"], update["job"]["state"], now))


def client_process(targets: list[tuple[str, str, str]], ready, start_at: float, stop_at: float, out) -> None:
    """One OS process holding a share of the websocket clients (one asyncio loop cannot parse
    25,000 messages a second on its own)."""

    async def run():
        received: list = []
        connected: list = []
        frames = [0]
        tasks = [asyncio.create_task(client(url, cookie, origin, received, connected, stop_at, frames))
                 for url, cookie, origin in targets]
        while time.time() < start_at:
            await asyncio.sleep(0.05)
        ready.put(len(connected))
        await asyncio.gather(*tasks, return_exceptions=True)
        return received, frames[0]

    import uvloop  # the clients are the load generator: keep their share of the 2 cores small

    out.put(uvloop.run(run()))


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
        from jobs.services.lifecycle import job_observe, verdict

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

        spies = [subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "-d", str(int(args.seconds)), "-r", "200",
                                   "-f", "raw", "-o", f"/tmp/fanout-spy-{n}.txt", "--gil"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for n, proc in enumerate(stack.procs)] if os.environ.get("BENCH_PYSPY") else []
        sent: dict = {}
        cpu_before, _ = process_stats([p.pid for p in stack.procs])
        clients_before, _ = process_stats([p.pid for p in procs])
        driver_before = time.process_time()
        interval, started = 1 / args.rate, time.time()
        for n, (pk, state) in enumerate(plan):
            delay = started + n * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            sent[(pk, state)] = time.time()
            job_observe(pk, verdict(state), source="watcher")
        elapsed = time.time() - started
        for spy in spies:
            spy.wait(60)
        cpu_after, rss = process_stats([p.pid for p in stack.procs])
        clients_after, _ = process_stats([p.pid for p in procs])
        driver_cpu = time.process_time() - driver_before
        results = [out.get(timeout=args.seconds + 120) for _ in procs]
        received = [item for items, _ in results for item in items]
        frames = sum(count for _, count in results)
        for proc in procs:
            proc.join(10)
        latencies = [(t - sent[(pk, state)]) * 1000 for pk, state, t in received if (pk, state) in sent]
        if os.environ.get("BENCH_BUCKETS"):
            from collections import defaultdict

            from bench.harness import percentile
            buckets = defaultdict(list)
            for pk, state, t in received:
                if (pk, state) in sent:
                    buckets[int(sent[(pk, state)] - started)].append((t - sent[(pk, state)]) * 1000)
            for second in sorted(buckets):
                print(f"  second {second}: p50 {percentile(buckets[second], 50):.0f} p99 {percentile(buckets[second], 99):.0f}")
        cpu_percent = (cpu_after - cpu_before) / elapsed * 100
        expected = len(plan) * args.clients
        print(f"\nfan-out: {args.clients} clients on {len(stack.urls)} web processes, {args.rate:.0f} updates/s "
              f"for {args.seconds:.0f} s ({len(plan)} updates)")
        print(f"  delivered {len(latencies)}/{expected} updates in {frames} frames "
              f"({frames / max(1, connected) / elapsed:.1f} frames a second per socket; updates sent over {elapsed:.1f} s)")
        print(f"  delivery latency  {summary(latencies)}")
        print(f"  web processes     CPU {cpu_percent:5.1f}% of one core (sum), RSS {rss:6.1f} MiB (sum)")
        print(f"  load generator    clients CPU {(clients_after - clients_before) / elapsed * 100:5.1f}% of one core "
              f"(sum of {len(procs)} processes), driver (job_observe) {driver_cpu / elapsed * 100:5.1f}%")


if __name__ == "__main__":
    main()
