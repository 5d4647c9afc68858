"""Exit -> browser: how long after a job's process or container exits does a websocket client hear
about it, and how many backend calls does that cost, against a 1-second poller doing what NVFlare's
launchers do (inspect every handle once a second).

    .venv/bin/python bench/propagation.py [--backend process|docker] [--sizes 1 50 200] [--spread 3]

Stack: the embedded default in a throwaway directory, i.e. one `manage.py serve` process with the
watcher (and worker, beat) inside, SQLite and the in-process channel layer (no shared service is
touched). For each N, N jobs are launched that sleep until known, spread-out times and exit; a
logged-in websocket client on /ws/sites/<site>/jobs/ notes when each terminal `job.update` arrives.
Side by side, a poller inspects every unfinished handle once a second.

--backend process (default): real subprocesses under process_runner.py; the exit time is the
runner's own `finished_at` record. The poller runs in this process through the backend's inspect().
The watcher's calls are counted by its design: the change stream scans the state directory every
50 ms (one local directory scan, any N) and reconcile lists the workloads every
LAUNCHER_RECONCILE_SECONDS.

--backend docker: one container per job (image launcher-test/fake-python:1 on nvflare-network; run
`bash tests/images/build.sh` first; loopback only, nothing is pulled). Docker API calls are counted,
not estimated: two counting proxies (child processes of this script) listen on unix sockets and
forward bytes to /var/run/docker.sock, parsing each client connection's HTTP requests and telling
apart who sent them by the peer's pid (SO_PEERCRED). The site's `docker_host` points at proxy A, so
the dashboard's calls (the watcher in `manage.py serve`; the launches, made by this process as the
worker would) go through it; the poller's own Docker client uses proxy B. Exit time: the container's
State.FinishedAt (dockerd's record of containerd's exit timestamp, host wall clock) read by an
inspect sent as soon as this process's own `die` subscription (direct to the socket, not counted)
reports the exit; when the dashboard removed the container first, the `die` event's timeNano is
used instead. Both are the host's CLOCK_REALTIME, as is the receive time (time.time()) of the
websocket message, so no cross-clock correction is needed. The containers carry the site's label and
are removed by label at the end, whatever happens; the run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import struct
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
FIXTURES = ROOT / "tests" / "fixtures"
IMAGE = "launcher-test/fake-python:1"
DOCKER_SOCKET = "/var/run/docker.sock"
DOCKER_SITE = "propagation-bench"


from bench.harness import free_port, percentile  # noqa: E402


class Poller(threading.Thread):
    """NVFlare's launcher loop: every second, inspect each handle; note when it is seen finished."""

    def __init__(self, backend, handles: dict[str, object]):
        super().__init__(daemon=True)
        self.backend, self.handles = backend, dict(handles)
        self.seen: dict[str, float] = {}
        self.calls = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.seen) < len(self.handles):
            tick = time.monotonic()
            for ref, handle in self.handles.items():
                if ref in self.seen:
                    continue
                self.calls += 1
                if self.backend.inspect(handle).state.is_terminal:
                    self.seen[ref] = time.time()
            self.stop.wait(max(0.0, 1.0 - (time.monotonic() - tick)))


async def listen(url: str, origin: str, cookie: str, got: dict[int, float], ready: asyncio.Event):
    """A browser on the site's jobs page: note when each job's terminal update arrives."""
    from websockets.asyncio.client import connect

    async with connect(url, origin=origin, additional_headers={"Cookie": cookie}, ping_interval=None,
                       max_queue=None) as ws:
        ready.set()
        while True:
            message = json.loads(await ws.recv())
            now = time.time()
            for update in message["updates"] if message["type"] == "job.updates" else [message]:
                if update["type"] == "job.update" and update["job"]["state"] in ("succeeded", "failed"):
                    got.setdefault(update["job"]["id"], now)


def launch_all(site, n: int, spread: float, tag: str) -> list:
    from jobs.models import Job
    from jobs.services.launching import job_launch
    from tests.live.conftest import queued_job

    start_at = time.time() + 3 + n * 0.15  # every process is up before the first exit
    jobs = []
    for i in range(n):
        exit_at = start_at + spread * i / max(1, n - 1)
        sleep = exit_at - time.time()
        if sleep <= 0.5:
            raise SystemExit(f"launching is slower than planned ({i}/{n} launched); raise the margin")
        job, credentials = queued_job(site, f"p{n}-{tag}-{i}", f"sleep={sleep:.3f}")
        job_launch(job_pk=job.pk, credentials=credentials)
        jobs.append(Job.objects.get(pk=job.pk))
    return jobs


def run_size(n: int, spread: float, ctx) -> dict:
    from backends.base import Handle
    from jobs.services.sites import site_backend

    site, workspace, base, cookie = ctx
    got: dict[int, float] = {}
    holder: dict[str, object] = {}

    async def main():
        ready = asyncio.Event()
        listener = asyncio.create_task(listen(base.replace("http", "ws") + "/ws/sites/bench/jobs/", base, cookie,
                                              got, ready))
        await asyncio.wait_for(ready.wait(), 30)
        jobs = await asyncio.to_thread(launch_all, site, n, spread, secrets.token_hex(3))
        poller = Poller(site_backend(site), {j.handle["ref"]: Handle(**j.handle) for j in jobs})
        poller.start()
        holder.update(jobs=jobs, poller=poller)
        t0 = time.monotonic()
        end = t0 + spread + 60 + n * 0.2
        while not {j.pk for j in jobs} <= set(got):
            if time.monotonic() > end:
                raise SystemExit(f"only {len(got)}/{n} terminal updates arrived")
            await asyncio.sleep(0.05)  # a bench loop watching its own counters
        listener.cancel()
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    jobs, poller = holder["jobs"], holder["poller"]
    poller.join(spread + 30)
    push, poll = [], []
    for job in jobs:
        finished = _finished_at(workspace, job)
        if finished is None:
            continue
        push.append((got[job.pk] - finished) * 1000)
        if job.handle["ref"] in poller.seen:
            poll.append((poller.seen[job.handle["ref"]] - finished) * 1000)
    minutes = max(elapsed, 1e-9) / 60
    return {"n": n, "push": push, "poll": poll, "poll_calls_min": poller.calls / minutes, "elapsed": elapsed}


def _finished_at(workspace: Path, job) -> float | None:
    from jobs.models import Job

    job = Job.objects.get(pk=job.pk)
    # The runner's own exit record; the job record keeps it after the state file is removed.
    path = workspace / ".launcher" / f"{job.handle['ref']}.json"
    try:
        return json.loads(path.read_text())["finished_at"]
    except (FileNotFoundError, KeyError, ValueError):
        pass
    return _FINISHED.get(job.handle["ref"])


_FINISHED: dict[str, float] = {}


def keep_exit_times(workspace: Path, stop: threading.Event) -> None:
    """Remember each runner's finished_at before the watcher's cleanup removes the state file."""
    state_dir = workspace / ".launcher"
    while not stop.is_set():
        try:
            for entry in os.scandir(state_dir):
                if entry.name.endswith(".json") and entry.name[:-5] not in _FINISHED:
                    try:
                        data = json.loads(Path(entry.path).read_text())
                    except (OSError, ValueError):
                        continue
                    if data.get("finished_at"):
                        _FINISHED[entry.name[:-5]] = data["finished_at"]
        except FileNotFoundError:
            pass
        stop.wait(0.01)


# ---------------------------------------------------------------------------------------------
# Counting proxy for the Docker socket (runs as a child process: --count-proxy LISTEN STATS)
# ---------------------------------------------------------------------------------------------


def api_route(method: str, target: str) -> str:
    """'GET /v1.41/containers/abc/json?x' -> 'GET containers/{id}/json' (one key per kind of call)."""
    path = re.sub(r"^/v[0-9.]+", "", target.split("?", 1)[0]).strip("/")
    parts = path.split("/")
    if parts[0] == "containers" and len(parts) >= 2 and parts[1] not in ("create", "json", "prune"):
        parts[1] = "{id}"
    elif parts[0] in ("networks", "volumes") and len(parts) >= 2:
        parts[1] = "{id}"
    elif parts[0] == "images" and len(parts) >= 3:
        parts = ["images", "{name}", parts[-1]]
    return f"{method} {'/'.join(parts)}"


class RequestParser:
    """Splits one connection's client -> daemon bytes into HTTP/1.1 requests (Content-Length bodies;
    the Docker SDK sends nothing chunked here) and reports each request line."""

    def __init__(self, on_request):
        self.on_request = on_request
        self.buf = b""
        self.body_left = 0
        self.lost = False  # something it cannot parse: keep forwarding, stop counting

    def feed(self, data: bytes) -> None:
        while data and not self.lost:
            if self.body_left:
                take = min(len(data), self.body_left)
                self.body_left -= take
                data = data[take:]
                continue
            self.buf += data
            data = b""
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                self.lost = len(self.buf) > 1 << 16
                return
            head, data, self.buf = self.buf[:end].decode("latin-1").split("\r\n"), self.buf[end + 4:], b""
            fields = head[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            self.on_request(fields[0], fields[1] if len(fields) > 1 else "")
            if "chunked" in headers.get("transfer-encoding", "").lower() or headers.get("upgrade"):
                self.lost = True
                self.on_request("UNPARSED", "/")
            self.body_left = int(headers.get("content-length") or 0)


def count_proxy(listen: str, stats_path: str, keep_log: bool) -> None:
    """Forward every connection on `listen` to the Docker socket; count requests per (client pid,
    route) and per connection; write the counts to `stats_path` every 0.2 s (atomically)."""
    routes: Counter[str] = Counter()
    connections: dict[int, list[int]] = {}  # connection number -> [client pid, requests]
    log: list[tuple[float, int, str, str]] = []  # (time, pid, route, target) of every request
    cred = struct.calcsize("3i")

    async def handle(reader, writer):
        pid = struct.unpack("3i", writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, cred))[0]
        number = len(connections)
        connections[number] = [pid, 0]

        def on_request(method: str, target: str) -> None:
            route = api_route(method, target)
            routes[f"{pid} {route}"] += 1
            connections[number][1] += 1
            if keep_log:
                log.append((time.time(), pid, route, target.split("?", 1)[0]))

        parser = RequestParser(on_request)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)
        except OSError:
            writer.close()
            return

        async def pump(src, dst, parse):
            try:
                while data := await src.read(1 << 16):
                    if parse:
                        parser.feed(data)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def dump_forever():
        while True:
            tmp = stats_path + ".tmp"
            Path(tmp).write_text(json.dumps({"t": time.time(), "routes": routes, "connections": connections,
                                             "log": log}))
            os.replace(tmp, stats_path)
            await asyncio.sleep(0.2)

    async def main():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        server = await asyncio.start_unix_server(handle, path=listen)
        os.chmod(listen, 0o660)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.close)
        dumper = asyncio.create_task(dump_forever())
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await server.wait_closed()
        dumper.cancel()

    asyncio.run(main())


class ProxyStats:
    """Reads a count_proxy's stats file; snapshots subtract."""

    def __init__(self, path: Path):
        self.path = path

    def snapshot(self) -> dict:
        asked = time.time()
        for _ in range(100):
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(self.path.read_text())
                if data["t"] > asked:  # a dump written after this call: nothing counted so far is missed
                    return data
            time.sleep(0.05)
        raise SystemExit(f"counting proxy stopped writing {self.path}")

    @staticmethod
    def routes_between(before: dict, after: dict, pid: int | None = None) -> Counter[str]:
        diff = Counter(after["routes"]) - Counter(before["routes"])
        out: Counter[str] = Counter()
        for key, n in diff.items():
            who, _, route = key.partition(" ")
            if pid is None or int(who) == pid:
                out[route] += n
        return out


def start_proxy(tmp: Path, name: str, *, keep_log: bool) -> tuple[subprocess.Popen, str, ProxyStats]:
    listen, stats = tmp / f"{name}.sock", tmp / f"{name}.json"
    proc = subprocess.Popen([sys.executable, __file__, "--count-proxy", str(listen), str(stats),
                             *(["--proxy-log"] if keep_log else [])],
                            start_new_session=True)
    deadline = time.monotonic() + 15
    while not (listen.exists() and stats.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"counting proxy {name} did not start")
        time.sleep(0.05)
    return proc, f"unix://{listen}", ProxyStats(stats)


# ---------------------------------------------------------------------------------------------
# Docker backend
# ---------------------------------------------------------------------------------------------


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
        poller.start()
        marks.update(jobs=jobs, poller=poller, start_at=start_at)
        # The quiet window: all N containers running, none has exited yet.
        await asyncio.sleep(max(0.0, start_at - 0.3 - time.time()))
        marks["a2"], marks["b2"] = await asyncio.to_thread(stats_a.snapshot), await asyncio.to_thread(stats_b.snapshot)
        marks["t2"] = time.time()
        end = time.monotonic() + spread + 60 + n * 0.3
        while not ({j.pk for j in jobs} <= set(got) and len(poller.seen) == n):
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


def docker_report(rows: list[dict], reconcile_s: int) -> None:
    print("\nexit -> websocket message (docker backend, embedded stack) vs 1-second poller\n")
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
        print(f"  watcher (manage.py serve) calls over the whole run, by route: {dict(row['watcher_all'])}")
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


# ---------------------------------------------------------------------------------------------
# The embedded stack, and the two modes
# ---------------------------------------------------------------------------------------------


def embedded_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This process's settings: the embedded default in `tmp` (also the server's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    env.update(LAUNCHER_VAR_DIR=str(tmp / "var"), SECRET_KEY=secrets.token_urlsafe(40),
               DJANGO_SETTINGS_MODULE="launcher_site.settings", LAUNCHER_LOG_LEVEL="WARNING",
               LAUNCHER_LOG_FOLLOWERS="0", PORT=str(free_port()), **extra)
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def login_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    get_user_model().objects.create_user("bench", password="bench-pw-123", is_staff=True)
    client = Client()
    client.login(username="bench", password="bench-pw-123")
    return f"sessionid={client.cookies['sessionid'].value}"


def serve_start(env: dict[str, str], log: Path | None = None) -> tuple[subprocess.Popen, str]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its own copy
    server = subprocess.Popen([sys.executable, "manage.py", "serve"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=out, stderr=subprocess.STDOUT)
    if log:
        out.close()
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", int(env["PORT"])), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, f"http://127.0.0.1:{env['PORT']}"


def serve_stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def main_process(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-propagation-"))
    env = embedded_env(tmp)
    from jobs.models import Site

    workspace = tmp / "workspace"
    (workspace / "startup").mkdir(parents=True)
    site = Site.objects.create(name="bench", backend="process", process={
        "workspace": str(workspace), "default_python_path": sys.executable,
        "default_job_env": {"PYTHONPATH": str(FIXTURES)},
        # The fake job module; root only because the venv's python may be unreachable for other uids.
        "allowed_modules": ["fake_nvflare_job"], "allow_root": True})
    cookie = login_cookie()
    server, base = serve_start(env)
    stop = threading.Event()
    threading.Thread(target=keep_exit_times, args=(workspace, stop), daemon=True).start()
    try:
        rows = [run_size(n, args.spread, (site, workspace, base, cookie)) for n in args.sizes]
    finally:
        stop.set()
        serve_stop(server)

    scans_per_min = 60 / 0.05
    print("\nexit -> websocket message (process backend, embedded stack) vs 1-second poller\n")
    print("| N | push p50 | push p99 | poll p50 | poll p99 | push backend calls/min | poll backend calls/min |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['n']} | {percentile(row['push'], 50):.0f} ms | {percentile(row['push'], 99):.0f} ms "
              f"| {percentile(row['poll'], 50):.0f} ms | {percentile(row['poll'], 99):.0f} ms "
              f"| {scans_per_min:.0f} dir scans + {2 * (row['n'] + 1)} reads (reconcile) "
              f"| {row['poll_calls_min']:.0f} inspects |")


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
    server = clock = None
    try:
        proxy_a, url_a, stats_a = start_proxy(tmp, "dashboard", keep_log=True)
        proxy_b, url_b, stats_b = start_proxy(tmp, "poller", keep_log=False)
        procs += [proxy_a, proxy_b]
        env = embedded_env(tmp)
        from django.conf import settings

        stale = remove_site_containers()
        if stale:
            print(f"removed {stale} containers left by an earlier run")
        site = docker_site(tmp, url_a)
        cookie = login_cookie()
        clock = ExitClock(site.name)
        server, base = serve_start(env, tmp / "serve.log")
        rows = []
        for n in args.sizes:
            rows.append(run_docker_size(n, args.spread, args, (site, base, cookie, server.pid, url_b, stats_a,
                                                               stats_b, clock)))
            print(f"N={n} done: push p50 {percentile(rows[-1]['push'], 50):.0f} ms, "
                  f"p99 {percentile(rows[-1]['push'], 99):.0f} ms", flush=True)
    finally:
        if clock is not None:
            clock.close()
        if server is not None:
            serve_stop(server)
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
    docker_report(rows, settings.LAUNCHER_RECONCILE_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("process", "docker"), default="process")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--spread", type=float, default=3.0, help="seconds over which the N exits are spread")
    parser.add_argument("--quiet", type=float, default=10.0,
                        help="docker: seconds with all N containers running before the first exit")
    parser.add_argument("--launch-seconds", type=float, default=0.25,
                        help="docker: planned seconds per container launch (4 in parallel)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds before the whole run is abandoned")
    parser.add_argument("--count-proxy", nargs=2, metavar=("LISTEN", "STATS"), help=argparse.SUPPRESS)
    parser.add_argument("--proxy-log", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count_proxy:
        count_proxy(*args.count_proxy, args.proxy_log)
        return

    def give_up(*_):
        raise TimeoutError(f"the bench took longer than --timeout {args.timeout}s")

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(args.timeout)
    (main_docker if args.backend == "docker" else main_process)(args)


if __name__ == "__main__":
    main()
