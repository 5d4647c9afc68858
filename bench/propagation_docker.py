"""Exit -> browser for the Docker backend (bench/propagation.py --backend docker; see its docstring):
one container per job, Docker API calls counted through two counting proxies
(bench/docker_api_proxy.py), exit times from dockerd's own records."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOCKER_SITE = "propagation-bench"

from bench.docker_api_proxy import DOCKER_SOCKET, ProxyStats, start_proxy  # noqa: E402
from bench.harness import percentile  # noqa: E402
from bench.propagation_stack import (  # noqa: E402
    IMAGE,
    embedded_env,
    listen,
    login_cookie,
    production_env,
    production_start,
    production_stop,
    serve_start,
    serve_stop,
    wait_watcher,
)


class DockerPoller(threading.Thread):
    """NVFlare's Docker launcher: every second, inspect each container not yet seen finished (its own
    Docker client, through proxy B). A container the dashboard already removed counts as finished
    when the poller's inspect finds it gone, which is also what NVFlare's handle would conclude."""

    def __init__(self, base_url: str, names: list[str]):
        import docker

        super().__init__(daemon=True)
        self.api = docker.APIClient(base_url=base_url, version="auto", timeout=30)
        self.names = list(names)
        self.seen: dict[str, float] = {}
        self.how: Counter[str] = Counter()
        self.calls = 0
        self.ticks: list[float] = []  # how long each round of inspects took
        self.stop = threading.Event()

    def run(self) -> None:
        from docker.errors import NotFound

        while not self.stop.is_set() and len(self.seen) < len(self.names):
            tick = time.monotonic()
            for name in self.names:
                if name in self.seen:
                    continue
                self.calls += 1
                try:
                    status = self.api.inspect_container(name)["State"]["Status"]
                except NotFound:
                    status = "removed"
                except Exception:  # a slow or failed call: try again next round, as a poller would
                    continue
                if status in ("exited", "dead", "removed"):
                    self.seen[name] = time.time()
                    self.how[status] += 1
            self.ticks.append(time.monotonic() - tick)
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - tick)))


class ExitClock(threading.Thread):
    """This process's own `die` subscription (straight to the Docker socket, not counted): the die
    event's timeNano, and State.FinishedAt from an inspect sent at once (before the dashboard's
    cleanup removes the container, usually)."""

    def __init__(self, site_name: str):
        import docker

        from backends.base import LABEL_SITE

        super().__init__(daemon=True)
        self.api = docker.APIClient(base_url=f"unix://{DOCKER_SOCKET}", version="auto", timeout=30)
        self.inspector = docker.APIClient(base_url=f"unix://{DOCKER_SOCKET}", version="auto", timeout=30)
        self.stream = self.api.events(decode=True, filters={"type": "container", "event": ["die"],
                                                             "label": [f"{LABEL_SITE}={site_name}"]})
        self.die: dict[str, float] = {}
        self.ids: dict[str, str] = {}  # container id -> name
        self.finished: dict[str, float] = {}
        self.pool = ThreadPoolExecutor(4)
        self.start()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # the stream closes under us on close()
            for event in self.stream:
                name = event["Actor"]["Attributes"].get("name", "")
                self.die[name] = event["timeNano"] / 1e9
                self.ids[event["id"]] = name
                self.pool.submit(self._finished_at, event["id"], name)

    def _finished_at(self, container_id: str, name: str) -> None:
        from backends.docker.observe import parse_docker_time

        with contextlib.suppress(Exception):  # gone already: the die time stands in
            at = parse_docker_time(self.inspector.inspect_container(container_id)["State"]["FinishedAt"])
            if at:
                self.finished[name] = at

    def exit_time(self, name: str) -> tuple[float | None, str]:
        if name in self.finished:
            return self.finished[name], "FinishedAt"
        if name in self.die:
            return self.die[name], "die"
        return None, "none"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()
        self.pool.shutdown(wait=False)


def launch_docker(site, n: int, spread: float, quiet: float, per_launch: float, tag: str) -> tuple[list, float]:
    """Launch N containers as the worker does (job_launch), 4 at a time; container i sleeps so that it
    exits at start_at + spread * i / (N - 1), start_at leaving `quiet` seconds after the launches."""
    from django.db import connection

    from jobs.models import Job, JobEvent, Study
    from jobs.services.launching import job_launch
    from jobs.services.submission import split_credentials
    from tests.conftest import client_job_args

    start_at = time.time() + quiet + n * per_launch

    def one(i: int):
        try:
            job_id = f"d{n}-{tag}-{i}"
            sleep = start_at + spread * i / max(1, n - 1) - time.time()
            if sleep <= 0.5:
                raise SystemExit(f"launching is slower than planned ({i}/{n}); raise --launch-seconds")
            study = Study.objects.create(site=site, name=f"s-{job_id}", env={"FAKE_SLEEP": f"{sleep:.3f}"})
            stored, credentials = split_credentials(client_job_args(job_id))
            job = Job.objects.create(site=site, job_id=job_id, backend="docker", job_args=stored, study=study.name,
                                     image=IMAGE, job_meta={"study": study.name, "launcher_spec": {
                                         "default": {"docker": {"image": IMAGE}}}})
            JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api", message="submitted")
            job_launch(job_pk=job.pk, credentials=credentials)
            job = Job.objects.get(pk=job.pk)
            if not job.handle:
                raise SystemExit(f"{job_id} did not launch: {job.state} {job.detail}")
            return job
        finally:
            connection.close()

    with ThreadPoolExecutor(4) as pool:
        jobs = list(pool.map(one, range(n)))
    return jobs, start_at


def run_docker_size(n: int, spread: float, args, ctx) -> dict:
    site, base, cookie, serve_pid, poll_url, stats_a, stats_b, clock = ctx
    got: dict[int, float] = {}
    marks: dict[str, object] = {}

    async def main():
        ready = asyncio.Event()
        listener = asyncio.create_task(listen(base.replace("http", "ws") + f"/ws/sites/{site.name}/jobs/", base,
                                              cookie, got, ready))
        await asyncio.wait_for(ready.wait(), 30)
        marks["a0"], marks["t0"] = await asyncio.to_thread(stats_a.snapshot), time.time()
        jobs, start_at = await asyncio.to_thread(launch_docker, site, n, spread, args.quiet, args.launch_seconds,
                                                 secrets.token_hex(3))
        marks["launched"] = time.time()
        names = [job.handle["ref"] for job in jobs]
        poller = DockerPoller(poll_url, names)  # its client's version probe happens before the counts start
        marks["a1"], marks["b1"] = await asyncio.to_thread(stats_a.snapshot), await asyncio.to_thread(stats_b.snapshot)
        marks["t1"] = time.time()
        if args.poller:
            poller.start()
        marks.update(jobs=jobs, poller=poller, start_at=start_at)
        # The quiet window: all N containers running, none has exited yet.
        await asyncio.sleep(max(0.0, start_at - 0.3 - time.time()))
        marks["a2"], marks["b2"] = await asyncio.to_thread(stats_a.snapshot), await asyncio.to_thread(stats_b.snapshot)
        marks["t2"] = time.time()
        end = time.monotonic() + spread + 60 + n * 0.3
        while not ({j.pk for j in jobs} <= set(got) and (len(poller.seen) == n or not args.poller)):
            if time.monotonic() > end:
                raise SystemExit(f"only {len(got)}/{n} terminal updates arrived, poller saw {len(poller.seen)}/{n}")
            await asyncio.sleep(0.05)  # a bench loop watching its own counters
        marks["t3"] = time.time()
        await asyncio.sleep(1.0)  # the last exits' cleanup calls
        marks["a3"], marks["b3"] = await asyncio.to_thread(stats_a.snapshot), await asyncio.to_thread(stats_b.snapshot)
        listener.cancel()

    asyncio.run(main())
    jobs, poller = marks["jobs"], marks["poller"]
    poller.stop.set()
    if args.poller:
        poller.join(10)
    clock_used: Counter[str] = Counter()
    push, poll, gaps = [], [], []
    for job in jobs:
        name = job.handle["ref"]
        exited, source = clock.exit_time(name)
        clock_used[source] += 1
        if exited is None:
            continue
        if name in clock.finished and name in clock.die:
            gaps.append((clock.die[name] - clock.finished[name]) * 1000)
        push.append((got[job.pk] - exited) * 1000)
        if name in poller.seen:
            poll.append((poller.seen[name] - exited) * 1000)
    # Where the time goes: FinishedAt -> die event is dockerd's own share; die event (this process's
    # direct subscription) -> websocket message is the dashboard's (event delivery, recording, push).
    die_to_browser = [(got[job.pk] - clock.die[job.handle["ref"]]) * 1000 for job in jobs if job.handle["ref"] in clock.die]
    first_exit = min((clock.exit_time(j.handle["ref"])[0] or float("inf")) for j in jobs)
    quiet_s = marks["t2"] - marks["t1"]
    watcher_all = ProxyStats.routes_between(marks["a0"], marks["a3"], serve_pid)
    watcher_quiet = ProxyStats.routes_between(marks["a1"], marks["a2"], serve_pid)
    launches = ProxyStats.routes_between(marks["a0"], marks["a1"], os.getpid())
    poll_quiet = ProxyStats.routes_between(marks["b1"], marks["b2"])
    poll_all = ProxyStats.routes_between(marks["b1"], marks["b3"])
    return {
        "n": n, "push": push, "die_to_browser": die_to_browser, "poll": poll, "clock": clock_used, "die_minus_finished": gaps,
        "quiet_s": quiet_s, "quiet_ok": first_exit > marks["t2"], "launch_s": marks["launched"] - marks["t0"],
        "window_s": marks["t3"] - marks["t0"] + 1.0, "poll_window_s": marks["t3"] - marks["t1"] + 1.0,
        "watcher_all": watcher_all, "watcher_quiet": watcher_quiet, "launches": launches,
        "poll_quiet": poll_quiet, "poll_all": poll_all, "poller_calls": poller.calls, "poller_how": poller.how,
        "poller_round_max_s": max(poller.ticks or [0.0]),
        "lists": sum(1 for at, pid, route, _ in stats_a.snapshot()["log"]
                     if at >= marks["t0"] and pid == serve_pid and route == "GET containers/json"),
    }


def docker_report(rows: list[dict], reconcile_s: int, layout: str, spread: float) -> None:
    print(f"\nexit -> browser, docker backend, {layout} layout, exits spread over {spread:g} s\n")
    print("| N | exits/s | push p50 / p99 | of it: dockerd's FinishedAt -> `die` p50 / p99 | ours: `die` -> browser p50 / p99 |")
    print("|---|---|---|---|---|")
    for row in rows:
        rate = (row["n"] - 1) / spread if row["n"] > 1 else 0
        print(f"| {row['n']} | {rate:.0f} | {percentile(row['push'], 50):.0f} / {percentile(row['push'], 99):.0f} ms "
              f"| {percentile(row['die_minus_finished'], 50):.0f} / {percentile(row['die_minus_finished'], 99):.0f} ms "
              f"| {percentile(row['die_to_browser'], 50):.0f} / {percentile(row['die_to_browser'], 99):.0f} ms |")
    print("\nexit -> websocket message (docker backend) vs 1-second poller\n")
    print("| N | push p50 | push p99 | 1 s poll p50 | 1 s poll p99 | watcher calls/min, all N running "
          "| watcher calls, whole run | poller calls/min, all N running |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        quiet_min = row["quiet_s"] / 60
        watch_quiet = sum(row["watcher_quiet"].values())
        total = sum(row["watcher_all"].values())
        print(f"| {row['n']} | {percentile(row['push'], 50):.0f} ms | {percentile(row['push'], 99):.0f} ms "
              f"| {percentile(row['poll'], 50):.0f} ms | {percentile(row['poll'], 99):.0f} ms "
              f"| {watch_quiet} in {row['quiet_s']:.1f} s "
              f"| {total} in {row['window_s']:.0f} s ({total / row['n']:.1f} per container) "
              f"| {sum(row['poll_quiet'].values()) / quiet_min:.0f} inspects |")
    print()
    for row in rows:
        n = row["n"]
        print(f"N={n}: exit clock {dict(row['clock'])}; die event - FinishedAt: "
              f"p50 {percentile(row['die_minus_finished'], 50):.1f} ms, p99 {percentile(row['die_minus_finished'], 99):.1f} ms; "
              f"launch phase {row['launch_s']:.1f} s, quiet window {row['quiet_s']:.1f} s "
              f"({'no exit inside' if row['quiet_ok'] else 'AN EXIT FELL INSIDE IT'})")
        print(f"  die event -> websocket message (the dashboard's share): p50 {percentile(row['die_to_browser'], 50):.1f} ms, "
              f"p99 {percentile(row['die_to_browser'], 99):.1f} ms")
        print(f"  watcher (manage.py {'watch' if layout == 'production' else 'serve'}) calls over the whole run, by route: {dict(row['watcher_all'])}")
        print(f"  watcher calls while all N ran: {dict(row['watcher_quiet'])}")
        print(f"  launch calls (this process, as the worker): {dict(row['launches'])} = "
              f"{sum(row['launches'].values()) / n:.1f}/job")
        print(f"  poller: {row['poller_calls']} inspects over {row['poll_window_s']:.1f} s "
              f"({sum(row['poll_all'].values())} requests at proxy B: {dict(row['poll_all'])}); seen {dict(row['poller_how'])}; "
              f"slowest round {row['poller_round_max_s'] * 1000:.0f} ms")
        print(f"  reconcile lists seen: {row['lists']} (every LAUNCHER_RECONCILE_SECONDS={reconcile_s}s, each one list "
              f"call, plus an inspect only for containers that have ended)")


def docker_site(tmp: Path, docker_host: str):
    from jobs.models import Site
    from tests.live.conftest import docker_workspace

    workspace = docker_workspace(tmp / "dws")
    return Site.objects.create(name=DOCKER_SITE, backend="docker", docker={
        "workspace": str(workspace), "timeout": 30, "docker_host": docker_host})


def remove_site_containers() -> int:
    import docker

    from backends.base import LABEL_SITE

    client = docker.APIClient(base_url=f"unix://{DOCKER_SOCKET}", version="auto", timeout=60)
    removed = 0
    for container in client.containers(all=True, filters={"label": f"{LABEL_SITE}={DOCKER_SITE}"}):
        with contextlib.suppress(Exception):
            client.remove_container(container["Id"], force=True)
            removed += 1
    client.close()
    return removed


def main_docker(args) -> None:
    import shutil

    import docker

    try:
        docker.APIClient(base_url=f"unix://{DOCKER_SOCKET}", version="auto", timeout=10).inspect_image(IMAGE)
    except Exception as exc:
        raise SystemExit(f"{IMAGE} is not on the Docker host behind {DOCKER_SOCKET} ({exc}); "
                         "run `bash tests/images/build.sh` first") from None
    tmp = Path(tempfile.mkdtemp(prefix="bench-propagation-docker-"))
    os.chmod(tmp, 0o755)
    procs: list[subprocess.Popen] = []
    stack: list[subprocess.Popen] = []
    server = clock = env = None
    try:
        proxy_a, url_a, stats_a = start_proxy(tmp, "dashboard", keep_log=True)
        proxy_b, url_b, stats_b = start_proxy(tmp, "poller", keep_log=False)
        procs += [proxy_a, proxy_b]
        env = production_env(tmp) if args.layout == "production" else embedded_env(tmp)
        from django.conf import settings

        stale = remove_site_containers()
        if stale:
            print(f"removed {stale} containers left by an earlier run")
        site = docker_site(tmp, url_a)
        cookie = login_cookie()
        clock = ExitClock(site.name)
        if args.layout == "production":  # the watcher is `manage.py watch`: its calls are the ones counted
            stack, base, watcher_pid = production_start(env, tmp)
        else:
            server, base = serve_start(env, tmp / "serve.log")
            watcher_pid = server.pid
        wait_watcher(site)
        rows = []
        for n in args.sizes:
            rows.append(run_docker_size(n, args.spread, args, (site, base, cookie, watcher_pid, url_b, stats_a,
                                                               stats_b, clock)))
            print(f"N={n} done: push p50 {percentile(rows[-1]['push'], 50):.0f} ms, "
                  f"p99 {percentile(rows[-1]['push'], 99):.0f} ms", flush=True)
    finally:
        if clock is not None:
            clock.close()
        if server is not None:
            serve_stop(server)
        if env is not None and args.layout == "production":
            production_stop(stack, env)
        left = remove_site_containers()
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if left:
            print(f"removed {left} containers at the end (label {DOCKER_SITE})")
        shutil.rmtree(tmp, ignore_errors=True)
    docker_report(rows, settings.LAUNCHER_RECONCILE_SECONDS, args.layout, args.spread)
