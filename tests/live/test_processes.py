"""The production shape, for real: `manage.py serve` web processes, a Celery worker and
`manage.py watch` against PostgreSQL and Redis, and what happens when one of them (or Redis)
goes away. Jobs run on the process backend (real subprocesses)."""

from __future__ import annotations

import asyncio
import signal

import pytest
import requests
from asgiref.sync import sync_to_async

from jobs.models import Job, JobEvent
from jobs.services.launching import job_launch
from jobs.services.lifecycle import job_observe, verdict
from jobs.services.tokens import token_create
from tests.conftest import client_job_args
from tests.live.conftest import (
    TERMINAL,
    Browser,
    assert_clean_history,
    job_state,
    kill_job_process,
    process_state,
    queued_job,
    session_cookie,
)
from tests.util import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]


@pytest.mark.asyncio
async def test_job_launched_through_one_web_process_is_pushed_to_a_socket_on_another(
        processes, live_redis, process_site, users):
    procs = processes(live_redis.url)
    web_a, web_b = procs.serve(), procs.serve()
    procs.worker()
    procs.watch()
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    _, secret = await sync_to_async(token_create)(site=process_site, name="fl-server")
    browser = await Browser(web_b, "/ws/sites/site-1/jobs/", cookie).connect()

    response = await asyncio.to_thread(
        requests.post, f"{web_a}/api/v1/jobs/", timeout=10, headers={"Authorization": f"Token {secret}"},
        json={"site": "site-1", "job_id": "multi-1", "job_args": client_job_args("multi-1"), "set_options": ["sleep=0.5"]})
    assert response.status_code == 201, response.text
    job_pk = response.json()["id"]

    seen, seqs = [], []
    while not seen or seen[-1] not in TERMINAL:
        message = await browser.next(timeout=30)
        # A state change carries its event's seq; a resource-use sample or progress push has none.
        if message["type"] == "job.update" and message.get("seq") is not None:
            assert message["job"]["id"] == job_pk
            seen.append(message["job"]["state"])
            seqs.append(message["seq"])
    assert seen == ["queued", "starting", "running", "succeeded"]
    assert seqs == sorted(set(seqs)) and seqs[-1] == (await JobEvent.objects.filter(job_id=job_pk).alast()).pk
    await browser.close()
    await sync_to_async(assert_clean_history)(job_pk)


@pytest.mark.asyncio
async def test_two_hundred_clients_reconnecting_within_a_second_all_succeed(processes, live_redis, process_site, users):
    procs = processes(live_redis.url)
    web = procs.serve()
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    job, _ = await sync_to_async(queued_job)(process_site, "storm-1")
    browsers = [Browser(web, "/ws/sites/site-1/jobs/", cookie) for _ in range(200)]
    await asyncio.gather(*(b.connect() for b in browsers))
    await asyncio.gather(*(b.close() for b in browsers))

    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(b.connect(resume=True) for b in browsers), return_exceptions=True)
    took = loop.time() - started
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [] and took < 10, f"{len(failures)} failed, first: {failures[:1]}; took {took:.1f}s"
    # Every one of them is subscribed: a change reaches all 200.
    await sync_to_async(job_observe)(job.pk, verdict("running"), source="worker")
    await asyncio.gather(*(b.until(lambda b: b.states().get("storm-1") == "running", timeout=30) for b in browsers))
    await asyncio.gather(*(b.close() for b in browsers))
    print(f"200 reconnects took {took:.2f}s")


def test_watcher_killed_while_jobs_run_and_restarted_ends_every_job_right_once(
        processes, live_redis, process_site, workspace):
    procs = processes(live_redis.url)
    watch = procs.watch()
    plan = {  # job_id: (set options, expected state, exit code)
        "w-ok": (("sleep=3",), "succeeded", 0),
        "w-fail": (("sleep=3", "exit=3"), "failed", 3),
        "w-abort": (("sleep=3", "exit=9"), "aborted", 9),
        "w-long": (("sleep=60",), "failed", 137),  # killed by hand while the watcher is down
        "w-after": (("sleep=7",), "succeeded", 0),  # ends after the new watcher is up
    }
    jobs = {}
    for job_id, (options, _, _) in plan.items():
        job, credentials = queued_job(process_site, job_id, *options)
        job_launch(job_pk=job.pk, credentials=credentials)
        jobs[job_id] = job.pk
    wait_until(lambda: all(job_state(pk) == "running" for pk in jobs.values()), timeout=20,
               message="the watcher to see every job running")

    procs.kill(watch)  # SIGKILL: no lease release, no goodbye
    kill_job_process(workspace, "site-1-w-long")
    for job_id in ("w-ok", "w-fail", "w-abort", "w-long"):
        wait_until(lambda: process_state(workspace, f"site-1-{job_id}").get("exit_code") is not None, timeout=20,
                   message=f"{job_id} to exit while no watcher runs")
    assert {job_state(pk) for pk in jobs.values()} == {"running"}  # nobody recorded the exits

    procs.watch()
    wait_until(lambda: all(job_state(pk) in TERMINAL for pk in jobs.values()), timeout=30,
               message="every job to end")
    for job_id, (_, expected, exit_code) in plan.items():
        job = Job.objects.get(pk=jobs[job_id])
        assert (job.state, job.exit_code) == (expected, exit_code), job_id
        assert_clean_history(job.pk)


def test_worker_killed_mid_launch_launches_exactly_once_after_restart(
        processes, live_redis, process_site, workspace, settings):
    import psycopg

    procs = processes(live_redis.url)
    out = procs.shell(
        "from jobs.models import Site; from jobs.services.submission import job_submit; "
        "from tests.conftest import client_job_args; "
        "job, _ = job_submit(site=Site.objects.get(name='site-1'), job_id='mid-1', job_meta={}, "
        "job_args=client_job_args('mid-1'), set_options=['sleep=1']); print(job.pk)")
    job_pk = int(out.split()[-1])
    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"],
                         dbname=db["NAME"]) as lock:
        # Hold the job's row: the worker launches the workload, then blocks recording it.
        lock.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", [job_pk])
        worker = procs.worker()
        state = wait_until(lambda: process_state(workspace, "site-1-mid-1").get("pid") and
                           process_state(workspace, "site-1-mid-1"), timeout=30, message="the workload to start")
        procs.kill(worker)
        lock.rollback()
    assert job_state(job_pk) == "queued"  # launched, never recorded

    procs.worker()  # the task comes back after the visibility timeout
    procs.watch()
    wait_until(lambda: job_state(job_pk) in TERMINAL, timeout=60, message="the job to finish")
    job = Job.objects.get(pk=job_pk)
    assert job.state == "succeeded" and job.handle == {"backend": "process", "ref": "site-1-mid-1"}
    assert job.logs_tail.count("fake job started") == 1  # one process, not two
    assert state["runner_pid"]  # the first (and only) runner
    assert_clean_history(job_pk)
    assert JobEvent.objects.filter(job_id=job_pk, to_state="starting").count() <= 1


@pytest.mark.asyncio
async def test_redis_outage_keeps_recording_and_pushes_resume_when_it_returns(
        processes, live_redis, process_site, workspace, users):
    procs = processes(live_redis.url)
    web = procs.serve(LAUNCHER_WS_HEARTBEAT_SECONDS="1")
    procs.watch()
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    _, secret = await sync_to_async(token_create)(site=process_site, name="fl-server")
    browser = await Browser(web, "/ws/sites/site-1/jobs/", cookie).connect()
    pks = {}
    for job_id in ("r-during", "r-after"):
        job, credentials = await sync_to_async(queued_job)(process_site, job_id, "sleep=120")
        await sync_to_async(job_launch)(job_pk=job.pk, credentials=credentials)
        pks[job_id] = job.pk
    await browser.until(lambda b: set(b.states().values()) == {"running"} and len(b.states()) == 2)

    live_redis.stop()
    await asyncio.to_thread(kill_job_process, workspace, "site-1-r-during")
    await asyncio.to_thread(wait_until, lambda: job_state(pks["r-during"]) == "failed", timeout=20,
                            message="the watcher to record the exit with Redis down")
    reply = await asyncio.to_thread(requests.get, f"{web}/api/v1/jobs/{pks['r-during']}/", timeout=10,
                                    headers={"Authorization": f"Token {secret}"})
    assert reply.status_code == 200 and reply.json()["state"] == "failed"

    live_redis.start()  # same port
    await asyncio.to_thread(wait_until, lambda: _subscribers(live_redis, "asgi__group__site.site-1") >= 1,
                            timeout=30, message="the web process to subscribe again")
    await asyncio.to_thread(kill_job_process, workspace, "site-1-r-after")
    await browser.until(lambda b: b.states().get("r-after") == "failed", timeout=30)
    # The push of r-during's end was lost with Redis; the socket's heartbeat catch-up repairs it.
    await browser.until(lambda b: b.states().get("r-during") == "failed", timeout=10)
    await browser.close()


def _subscribers(redis_server, channel: str) -> int:
    import redis

    try:
        return redis.Redis.from_url(redis_server.url, socket_timeout=1).pubsub_numsub(channel)[0][1]
    except redis.RedisError:
        return 0


@pytest.mark.asyncio
async def test_web_restart_clients_reconnect_and_see_current_state(processes, live_redis, process_site, users):
    procs = processes(live_redis.url)
    web = procs.serve()
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    job, _ = await sync_to_async(queued_job)(process_site, "restart-1")
    browser = await Browser(web, "/ws/sites/site-1/jobs/", cookie).connect()
    await sync_to_async(job_observe)(job.pk, verdict("starting"), source="worker")
    await browser.until(lambda b: b.states().get("restart-1") == "starting")

    server = procs.procs[-1][1]
    procs.kill(server, signal.SIGTERM)
    await sync_to_async(job_observe)(job.pk, verdict("running"), source="watcher")  # while it is down
    await sync_to_async(job_observe)(job.pk, verdict("succeeded", return_code=0), source="watcher")
    port = web.rsplit(":", 1)[1]
    restart = asyncio.create_task(asyncio.to_thread(procs.start, "serve", "manage.py", "serve", "--port", port))
    await browser.reconnect(timeout=45)
    await restart
    message = await browser.next()
    assert message["type"] == "job.update" and message["job"]["state"] == "succeeded"
    assert message["seq"] == (await JobEvent.objects.filter(job_id=job.pk).alast()).pk
    await browser.close()
