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
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from backends.base import LABEL_JOB_PK, LABEL_SITE
from jobs.models import Job, Site, Study
from jobs.services.tokens import token_create
from tests.live.conftest import docker_workspace
from tests.live.scale_stack import (
    DOCKER_STUDIES,
    IMAGE,
    Submitter,
    all_ended,
    assert_ended_as_planned,
    assert_every_job_ended_right_once,
    eventually,
    every_browser_saw_every_change,
    in_db,
    multi_process_stack,
    plan_jobs,
    site_outcomes,
    stack_start,
    wait_all_ended,
)
from tests.util import docker_client_or_skip, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]


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
        wait_until(lambda: not dockerd.containers.list(all=True, filters=label, ignore_removed=True), timeout=30,
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
