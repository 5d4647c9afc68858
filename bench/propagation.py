"""Exit -> browser: how long after a job's process or container exits does a websocket client hear
about it, and how many backend calls does that cost, against a 1-second poller doing what NVFlare's
launchers do (inspect every handle once a second).

    .venv/bin/python bench/propagation.py [--backend process|docker] [--sizes 1 50 200] [--spread 3]
        [--layout embedded|production]   (production: docker only; see bench/propagation_stack.py)

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

--backend docker (bench/propagation_docker.py): one container per job (image
launcher-test/fake-python:1 on nvflare-network; run `bash tests/images/build.sh` first; loopback
only, nothing is pulled). Docker API calls are counted, not estimated: two counting proxies
(bench/docker_api_proxy.py, child processes) listen on unix sockets and forward bytes to
/var/run/docker.sock, parsing each client connection's HTTP requests and telling apart who sent them
by the peer's pid (SO_PEERCRED). The site's `docker_host` points at proxy A, so the dashboard's
calls (the watcher in `manage.py serve`; the launches, made by this process as the worker would) go
through it; the poller's own Docker client uses proxy B. Exit time: the container's State.FinishedAt
(dockerd's record of containerd's exit timestamp, host wall clock) read by an inspect sent as soon
as this process's own `die` subscription (direct to the socket, not counted) reports the exit; when
the dashboard removed the container first, the `die` event's timeNano is used instead. Both are the
host's CLOCK_REALTIME, as is the receive time (time.time()) of the websocket message, so no
cross-clock correction is needed. The containers carry the site's label and are removed by label at
the end, whatever happens; the run is bounded by --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import percentile  # noqa: E402
from bench.propagation_stack import (  # noqa: E402
    FIXTURES,
    embedded_env,
    listen,
    login_cookie,
    serve_start,
    serve_stop,
)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("process", "docker"), default="process")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--spread", type=float, default=3.0, help="seconds over which the N exits are spread")
    parser.add_argument("--quiet", type=float, default=10.0,
                        help="docker: seconds with all N containers running before the first exit")
    parser.add_argument("--launch-seconds", type=float, default=0.25,
                        help="docker: planned seconds per container launch (4 in parallel)")
    parser.add_argument("--layout", choices=("embedded", "production"), default="embedded",
                        help="docker: production = PostgreSQL + Redis, serve --workers 2, Celery worker, manage.py watch")
    parser.add_argument("--no-poller", dest="poller", action="store_false",
                        help="docker: no 1-second poller beside (its inspects load dockerd: N a second)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds before the whole run is abandoned")
    args = parser.parse_args()

    def give_up(*_):
        raise TimeoutError(f"the bench took longer than --timeout {args.timeout}s")

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(args.timeout)
    if args.layout == "production" and args.backend != "docker":
        parser.error("--layout production: only with --backend docker")
    if args.backend == "docker":
        from bench.propagation_docker import main_docker

        main_docker(args)
    else:
        main_process(args)


if __name__ == "__main__":
    main()
