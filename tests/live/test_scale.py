"""Load and scale, for real: PostgreSQL, a throwaway Redis, two `manage.py serve` web processes, two
Celery workers and one `manage.py watch`, all on loopback. Hundreds of jobs are launched through
both web processes at once (the FL server's POST /api/v1/jobs/ with a site token), with and without
a web process and a worker killed -9 on the way; every job must end right and run exactly once,
and a browser on each web process must follow every job to its recorded end. And 50 jobs on a
Docker site, one container each. Bounded: each test takes well under a minute on a 2-core machine."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from django.db.models import F

from backends.base import LABEL_JOB_PK, LABEL_SITE
from jobs.models import Job, JobEvent, Site, Study
from jobs.services.tokens import token_create
from tests.conftest import client_job_args
from tests.live.conftest import TERMINAL, Browser, Processes, assert_clean_history, docker_workspace, session_cookie
from tests.util import docker_client_or_skip, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]
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
    """wait_until for the event loop: the listeners keep reading while this waits."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.05)  # poll interval of a bounded wait


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
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def counted_site(process_site, workspace) -> tuple[Site, Path]:
    """The process site, its jobs appending one line each to a file when they start."""
    starts = workspace / "starts.log"  # where the unprivileged job user can reach it
    starts.touch()
    starts.chmod(0o666)
    process_site.process = {**process_site.process, "default_job_env": {
        **process_site.process["default_job_env"], "FAKE_JOB_STARTS": str(starts)}}
    process_site.save()
    return process_site, starts


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


@pytest.mark.asyncio
async def test_two_hundred_jobs_through_two_web_processes_end_right_once_and_reach_both_browsers(
        live_redis, processes, counted_site, workspace, users):
    site, starts = counted_site
    plan = plan_jobs("load", 200, seed=8)
    async with multi_process_stack(live_redis, processes, site, users) as (stack, listeners, submitter):
        started = time.monotonic()
        await asyncio.to_thread(submitter.submit_all, plan)
        accepted_in = time.monotonic() - started
        assert Counter(submitter.accepted.values()) == {201: 200} and submitter.failovers == []

        await in_db(wait_all_ended, site, len(plan), timeout=120, tries=submitter.tries)
        ended_in = time.monotonic() - started
        await in_db(assert_every_job_ended_right_once, site, plan, starts, workspace)

        history, exact = await every_browser_saw_every_change(site, listeners)
        print(f"\n200 jobs: accepted in {accepted_in:.1f}s, all ended in {ended_in:.1f}s; "
              f"{sum(map(len, history.values()))} changes, sent as such to each browser: {exact}")


@pytest.mark.asyncio
async def test_web_process_and_worker_killed_while_launching_lose_and_duplicate_nothing(
        live_redis, processes, counted_site, workspace, users):
    site, starts = counted_site
    plan = plan_jobs("kill", 150, seed=9)
    async with multi_process_stack(live_redis, processes, site, users) as (stack, listeners, submitter):
        started = time.monotonic()
        submitting = asyncio.create_task(asyncio.to_thread(submitter.submit_all, plan))
        await eventually(lambda: len(submitter.accepted) >= 50, timeout=60, message="50 jobs to be accepted")
        await asyncio.to_thread(stack.procs.kill, stack.servers[1])  # SIGKILL: mid-request, no goodbye
        await asyncio.to_thread(stack.procs.kill, stack.workers[0])  # mid-launch (the queue is never empty here)
        killed_at = len(submitter.accepted)
        listeners[1] = await listeners[1].moved_to(stack.webs[0])
        await submitting

        assert sorted(submitter.accepted) == sorted(plan)  # every job accepted, through one web or the other
        nudged: set[str] = set()

        def ended_or_nudged() -> bool:
            nudged.update(submitter.nudge_stuck(site, plan, after=10, done=nudged))
            return all_ended(site, len(plan))

        try:
            await in_db(wait_until, ended_or_nudged, timeout=60, interval=0.5, message="every accepted job to end")
        except AssertionError:
            await in_db(wait_all_ended, site, len(plan), timeout=0, tries=submitter.tries)  # names the stuck ones
        # Lost launches can only be those in flight at the kills: the killed web process's requests
        # (8 submit threads) and the killed worker's tasks (2). Anything more is a systematic loss.
        assert len(nudged) <= 10, f"{nudged} never launched: more than were in flight at the kills"
        ended_in = time.monotonic() - started
        await in_db(assert_every_job_ended_right_once, site, plan, starts, workspace)

        history, exact = await every_browser_saw_every_change(site, listeners)
        print(f"\n150 jobs, web and worker killed after {killed_at} accepted: all ended in {ended_in:.1f}s; "
              f"{len(submitter.failovers)} POSTs failed over, {Counter(submitter.accepted.values())}, "
              f"{len(nudged)} launches lost with the worker and submitted again; "
              f"{sum(map(len, history.values()))} changes, sent as such to each browser: {exact}")


# ---------------------------------------------------------------------------------------------
# Docker backend: 50 jobs, one container each
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def dockerd():
    client = docker_client_or_skip(timeout=30)  # with the test image and nvflare-network
    yield client
    client.close()


@pytest.fixture
def scale_docker_site(dockerd, tmp_path, users):
    """A Docker site with its workspace in tmp; its studies set how the fake python behaves."""
    from jobs.models import Role, SiteMembership

    name = f"scale-{uuid.uuid4().hex[:8]}"
    workspace = docker_workspace(tmp_path / "dws")
    site = Site.objects.create(name=name, backend="docker", docker={"workspace": str(workspace), "timeout": 30})
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    for study, (sleep, code) in DOCKER_STUDIES.items():
        Study.objects.create(site=site, name=study, env={"FAKE_SLEEP": sleep, "FAKE_EXIT": str(code)})
    try:
        yield site
    finally:
        for container in dockerd.containers.list(all=True, filters={"label": f"{LABEL_SITE}={name}"}):
            with contextlib.suppress(Exception):
                container.remove(force=True)


class ContainerEvents(threading.Thread):
    """The daemon's container events matching `filters`, from now until stop(): streamed, because
    the daemon keeps only its last 256 events for a later `since` query."""

    def __init__(self, client, filters: dict):
        super().__init__(daemon=True)
        self.stream = client.events(decode=True, filters=filters)  # subscribed from here on
        self.events: list[dict] = []
        self.start()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # the stream closes under us on stop()
            for event in self.stream:
                self.events.append(event)

    def seen(self) -> list[tuple[str, str]]:
        """(job pk label, action) of each event so far."""
        return [(event["Actor"]["Attributes"].get(LABEL_JOB_PK, ""), event["Action"]) for event in list(self.events)]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()
        self.join(10)


@pytest.mark.docker
def test_fifty_docker_jobs_end_right_with_one_container_each(live_redis, processes, scale_docker_site, dockerd):
    site = scale_docker_site
    rng = random.Random(50)
    study_of = {f"dock-{i:03d}": rng.choice(list(DOCKER_STUDIES)) for i in range(50)}
    image = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}}
    stack = stack_start(processes(live_redis.url))
    _, secret = token_create(site=site, name="fl-server")
    label = {"label": f"{LABEL_SITE}={site.name}"}
    events = ContainerEvents(dockerd, {"type": "container", "event": ["create", "start", "destroy"], **label})
    try:
        submitter = Submitter(stack.webs, secret, site.name)
        started = time.monotonic()
        submitter.submit_all({job_id: {"job_meta": {"study": study, **image}} for job_id, study in study_of.items()})
        assert Counter(submitter.accepted.values()) == {201: 50}

        wait_all_ended(site, len(study_of), timeout=120, tries=submitter.tries)
        ended_in = time.monotonic() - started
        jobs = site_outcomes(site)
        assert_ended_as_planned(jobs, {job_id: DOCKER_STUDIES[study][1] for job_id, study in study_of.items()})

        # Every finished container is removed once its logs are saved (the exit is recorded first,
        # the tail right after) ...
        pks = {str(job["pk"]) for job in jobs.values()}
        wait_until(lambda: not dockerd.containers.list(all=True, filters=label), timeout=30,
                   message="the finished containers to be removed")
        logs = dict(Job.objects.filter(site=site).values_list("job_id", "logs_tail"))
        assert {job_id: text.count("FAKE-PYTHON ARGV") for job_id, text in logs.items()} == dict.fromkeys(study_of, 1)
        # ... and over the whole run each job had exactly one container, started once.
        wait_until(lambda: {pk for pk, action in events.seen() if action == "destroy"} >= pks, timeout=20,
                   message="the events of every container")
        per_job = Counter(events.seen())
        assert per_job == {(pk, action): 1 for pk in pks for action in ("create", "start", "destroy")}
    finally:
        events.stop()
    print(f"\n50 docker jobs ended in {ended_in:.1f}s, {len(per_job) // 3} containers")
