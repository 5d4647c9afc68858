"""The multi-process stack the scale tests drive (tests/live/test_scale.py): the production layout
started for real, a submitter with the site's token, websocket listeners, and the checks that every
job ended right, once, and reached every browser."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
from django.db.models import F

from jobs.models import Job, JobEvent, Site
from jobs.services.tokens import token_create
from tests.conftest import client_job_args
from tests.live.conftest import (
    TERMINAL,
    Browser,
    Processes,
    assert_clean_history,
    session_cookie,
)
from tests.util import wait_until

RANK = {"queued": 0, "starting": 1, "running": 2, **{state: 3 for state in TERMINAL}}
OUTCOME = {0: ("succeeded", 0), 3: ("failed", 1), 9: ("aborted", 9)}  # exit code -> (state, NVFlare return code)
EXIT_CODES = (0, 0, 0, 3, 9)
IMAGE = "launcher-test/fake-python:1"
# The fake python of the Docker image sleeps and exits as its environment says (tests/images/fake-python.sh);
# each study of the Docker site sets that environment: study -> (FAKE_SLEEP, FAKE_EXIT).
DOCKER_STUDIES = {"quick": ("0.2", 0), "slow": ("1.5", 0), "fails": ("0.5", 3), "aborts": ("0.8", 9)}


# ---------------------------------------------------------------------------------------------
# The stack and its clients
# ---------------------------------------------------------------------------------------------


@dataclass
class Stack:
    procs: Processes
    webs: list[str]
    servers: list[subprocess.Popen]
    workers: list[subprocess.Popen]


def stack_start(procs: Processes) -> Stack:
    """2 workers and the watcher first (they need no waiting), then 2 web processes."""
    workers = [procs.worker(), procs.worker()]
    procs.watch()
    webs, servers = [], []
    for _ in range(2):
        webs.append(procs.serve())
        servers.append(procs.procs[-1][1])
    return Stack(procs=procs, webs=webs, servers=servers, workers=workers)


class Submitter:
    """The FL server's side: POST /api/v1/jobs/ from a thread pool with a site token. A request that
    fails because its web process went away is sent again to the other one (a launch is
    idempotent on (site, job_id)), as flare_launcher_client does."""

    def __init__(self, webs: list[str], secret: str, site: str):
        self.webs, self.secret, self.site = webs, secret, site
        self.local = threading.local()
        self.accepted: dict[str, int] = {}  # job_id -> status of the answer that accepted it
        self.failovers: list[str] = []
        self.tries: dict[str, list[str]] = defaultdict(list)  # job_id -> "web: outcome" of each attempt
        self.lock = threading.Lock()

    def submit(self, i: int, job_id: str, *, set_options: list[str] | None = None, job_meta: dict | None = None) -> int:
        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        body = {"site": self.site, "job_id": job_id, "job_args": client_job_args(job_id),
                "set_options": set_options or [], "job_meta": job_meta or {}}
        deadline = time.monotonic() + 60
        for attempt in range(40):
            base = self.webs[(i + attempt) % len(self.webs)]
            try:
                reply = session.post(f"{base}/api/v1/jobs/", json=body, timeout=30,
                                     headers={"Authorization": f"Token {self.secret}"})
            except requests.RequestException as exc:
                with self.lock:
                    self.failovers.append(job_id)
                    self.tries[job_id].append(f"{base}: {type(exc).__name__}")
                if time.monotonic() > deadline:
                    raise
                continue
            assert reply.status_code in (200, 201), f"{job_id} via {base}: {reply.status_code} {reply.text[:300]}"
            with self.lock:
                self.accepted[job_id] = reply.status_code
                self.tries[job_id].append(f"{base}: {reply.status_code}")
            return reply.status_code
        raise AssertionError(f"{job_id}: no web process accepted it")

    def nudge_stuck(self, site: Site, plan: dict[str, dict], *, after: float, done: set[str]) -> set[str]:
        """POST again (once: not those in `done`) every accepted job still queued or starting
        `after` seconds after it was recorded, as an FL server that sees its job not start would;
        returns those job ids. Needed
        when a worker is killed -9 just as the broker hands it a launch: Redis has already popped
        the message, the worker never recorded it as unacknowledged, so nobody redelivers it
        (kombu's Redis transport, celery/celery#4354). A submit of a still-queued job queues its
        launch again."""
        from datetime import timedelta

        from django.utils import timezone

        stuck = set(Job.objects.filter(site=site, state__in=("queued", "starting"),
                                       created_at__lt=timezone.now() - timedelta(seconds=after))
                    .values_list("job_id", flat=True)) - done
        for job_id in stuck:
            assert self.submit(list(plan).index(job_id), job_id, **plan[job_id]) == 200
        return stuck

    def submit_all(self, plan: dict[str, dict], threads: int = 8) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda item: self.submit(item[0], item[1][0], **item[1][1]), enumerate(plan.items())))


@dataclass
class Listener:
    """A logged-in browser on one web process's /ws/sites/<site>/jobs/, reading in the background and
    keeping every (job_id, state, seq) it was sent, in order."""

    browser: Browser
    seen: list[tuple[str, str, int | None]] = field(default_factory=list)
    task: asyncio.Task | None = None

    async def start(self) -> Listener:
        await self.browser.connect(resume=True)  # as the dashboard's script does, on every connect
        self.task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        with contextlib.suppress(ConnectionClosed):
            while True:
                message = await self.browser.next(timeout=None)
                if message["type"] == "job.update":
                    self.seen.append((message["job"]["job_id"], message["job"]["state"], message["seq"]))
                elif message["type"] == "snapshot":
                    self.seen.extend((job["job_id"], job["state"], None) for job in message["jobs"])

    async def moved_to(self, base: str) -> Listener:
        """Its web process died: reconnect to another one and resume with what it holds."""
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)  # the read loop ends with the dead connection
        old = self.browser
        self.browser = Browser(base, "/ws/sites/" + old.url.split("/ws/sites/", 1)[1], old.cookie)
        self.browser.seq, self.browser.held, self.browser.jobs = old.seq, old.held, old.jobs
        return await self.start()

    def final_states(self) -> dict[str, str]:
        return self.browser.states()

    async def close(self) -> None:
        await self.browser.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def in_db(fn, *args, **kwargs):
    """Run ORM code off the event loop in a thread that closes its connection afterwards (an idle
    connection left behind would keep the test database from being dropped)."""
    from django.db import connection

    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    return await asyncio.to_thread(call)


async def eventually(predicate, *, timeout: float, message: str) -> None:
    """wait_until off the event loop: the listeners keep reading while this waits."""
    await asyncio.to_thread(wait_until, predicate, timeout=timeout, message=message)


# ---------------------------------------------------------------------------------------------
# What the database and the job processes say
# ---------------------------------------------------------------------------------------------


def plan_jobs(prefix: str, count: int, seed: int) -> dict[str, dict]:
    """job_id -> submit kwargs: a short random sleep, then exit 0, 3 or 9."""
    rng = random.Random(seed)
    return {f"{prefix}-{i:03d}": {"set_options": [f"sleep={rng.uniform(0.05, 0.8):.2f}",
                                                  f"exit={rng.choice(EXIT_CODES)}"]}
            for i in range(count)}


def planned_exit(options: dict) -> int:
    return int(options["set_options"][1].split("=")[1])


def site_outcomes(site: Site) -> dict[str, dict]:
    return {row["job_id"]: row for row in Job.objects.filter(site=site).values(
        "pk", "job_id", "state", "return_code", "exit_code", "handle")}


def all_ended(site: Site, count: int) -> bool:
    jobs = Job.objects.filter(site=site)
    return jobs.count() == count and not jobs.exclude(state__in=TERMINAL).exists()


def wait_all_ended(site: Site, count: int, *, timeout: float, tries: dict[str, list[str]] | None = None) -> None:
    """Wait for `count` jobs of the site to be terminal; else fail naming the stuck ones, their
    events and how their submits went."""
    try:
        wait_until(lambda: all_ended(site, count), timeout=timeout, interval=0.2, message=f"all {count} jobs to end")
    except AssertionError as exc:
        stuck = {job.job_id: (job.state, job.handle, [(e.to_state, e.source, e.message) for e in job.events.all()],
                              (tries or {}).get(job.job_id))
                 for job in Job.objects.filter(site=site).exclude(state__in=TERMINAL)[:10]}
        raise AssertionError(f"{exc}; {Job.objects.filter(site=site).count()} recorded, stuck: {stuck}") from None


def event_history(site: Site) -> dict[str, list[tuple[str, int]]]:
    """job_id -> [(to_state, seq)] of its state changes, in order (notes left out)."""
    history = defaultdict(list)
    for job_id, to_state, seq in (JobEvent.objects.filter(job__site=site).exclude(from_state=F("to_state"))
                                  .order_by("id").values_list("job__job_id", "to_state", "id")):
        history[job_id].append((to_state, seq))
    return dict(history)


def assert_ended_as_planned(jobs: dict[str, dict], exits: dict[str, int]) -> None:
    """One row per job id (none missing, none extra), each in the state and with the return and exit
    codes its exit code means, each with a clean history and a workload of its own."""
    assert sorted(jobs) == sorted(exits)
    got = {job_id: (job["state"], job["return_code"], job["exit_code"]) for job_id, job in jobs.items()}
    wrong = {job_id: ended for job_id, ended in got.items() if ended != (*OUTCOME[exits[job_id]], exits[job_id])}
    assert wrong == {}, f"{len(wrong)} jobs ended wrong: {dict(list(wrong.items())[:10])}"
    for job in jobs.values():
        assert_clean_history(job["pk"])
    assert len({job["handle"]["ref"] for job in jobs.values()}) == len(exits)


def assert_every_job_ended_right_once(site: Site, plan: dict[str, dict], starts_file: Path, workspace: Path) -> None:
    assert_ended_as_planned(site_outcomes(site), {job_id: planned_exit(options) for job_id, options in plan.items()})
    # Exactly one process per job: each fake job appends one line when it starts.
    starts = Counter(line.split()[0] for line in starts_file.read_text().splitlines())
    assert {job_id: n for job_id, n in starts.items() if n != 1} == {}
    assert sorted(starts) == sorted(plan)
    assert all((workspace / job_id / "job_record.json").is_file() for job_id in plan)


def assert_browser_saw_every_change(listener: Listener, history: dict[str, list[tuple[str, int]]]) -> int:
    """Every job reached this browser and ended there as recorded, with the seq of its last change;
    what it was sent in between is in order, each seq once, never backwards, never a state the job
    did not have. Returns how many of the recorded changes it was sent as such.

    Not every intermediate change is sent as such, by design: a payload is the job as it is when
    published (a change overtaken within milliseconds goes out as the later state), the web, worker
    and watcher processes publish independently, and a socket never sends a seq older than one it
    already sent for that job (so a browser never goes back); a resumed browser gets the latest
    state of what it missed."""
    per_job = defaultdict(list)
    for job_id, state, seq in listener.seen:
        per_job[job_id].append((state, seq))
    assert sorted(per_job) == sorted(history), "some jobs never reached this browser"
    exact = 0
    for job_id, changes in history.items():
        got = per_job[job_id]
        seqs = [seq for _, seq in got if seq is not None]
        assert seqs == sorted(set(seqs)), f"{job_id}: a seq sent twice or out of order: {got}"
        ranks = [RANK[state] for state, _ in got]
        assert ranks == sorted(ranks), f"{job_id}: went backwards: {got} vs {changes}"
        assert {state for state, _ in got} <= {state for state, _ in changes}, f"{job_id}: {got} vs {changes}"
        assert got[-1][0] == changes[-1][0] and seqs[-1] == changes[-1][1], f"{job_id}: {got} vs {changes}"
        exact += len(set(got) & set(changes))
    return exact


# ---------------------------------------------------------------------------------------------
# Process backend: 200 jobs through both web processes


@contextlib.asynccontextmanager
async def multi_process_stack(live_redis, processes, site, users):
    """The production layout started for real, a viewer's websocket on each web process, and a
    submitter with the site's token: (stack, listeners, submitter). The listeners close after."""
    stack = await asyncio.to_thread(stack_start, processes(live_redis.url))
    cookie = await in_db(session_cookie, users["viewer"])
    _, secret = await in_db(token_create, site=site, name="fl-server")
    listeners = [await Listener(Browser(web, f"/ws/sites/{site.name}/jobs/", cookie)).start() for web in stack.webs]
    try:
        yield stack, listeners, Submitter(stack.webs, secret, site.name)
    finally:
        for listener in listeners:  # a listener moved to another web process is closed as well
            await listener.close()


async def every_browser_saw_every_change(site, listeners) -> tuple[dict, list]:
    """Wait until each listener has seen every job end, then check what it was sent
    (assert_browser_saw_every_change). Returns (history, how many changes each was sent as such)."""
    history = await in_db(event_history, site)
    final = {job_id: changes[-1][0] for job_id, changes in history.items()}
    for listener in listeners:
        await eventually(lambda lst=listener: lst.final_states() == final, timeout=30,
                         message=f"{listener.browser.url} to see every job end")
    return history, [assert_browser_saw_every_change(listener, history) for listener in listeners]
