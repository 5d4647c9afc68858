"""The production layout (compose.yaml: PostgreSQL, Redis, migrate, web, worker, beat, watcher) runs
a job on the real dockerd, every dashboard page answers in it, and it survives its faults: web,
worker and watcher killed (as a crash: SIGKILL to the container's init, so compose's restart policy
brings it back), PostgreSQL and Redis restarted. Each drill has a job in flight across it; afterwards
every job's record is right (state, return and exit codes, one container) and nothing is lost.

Jobs run launcher-test/fake-python:1 on the host network; a study's env sets how long a job sleeps
and how it exits (tests/images/fake-python.sh)."""

from __future__ import annotations

import os
import re
import signal
import uuid

import pytest
import requests

from tests.compose.conftest import IMAGE, SITE, STAFF_PASSWORD, api
from tests.conftest import client_job_args
from tests.util import docker_client_or_skip, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
TERMINAL = {"succeeded", "failed", "aborted", "launch_failed", "lost"}


def submit(stack, study: str, job_id: str | None = None) -> str:
    """What NVFlare's client parent sends (the same call again is how it re-submits a job)."""
    job_id = job_id or str(uuid.uuid4())
    body = {"site": SITE, "job_id": job_id, "role": "client",
            "job_meta": {"study": study, "launcher_spec": {"default": {"docker": {"image": IMAGE}}}},
            "job_args": client_job_args(job_id, workspace=str(stack.workspace))}
    answer = api(stack, "site").post(f"{stack.url}/api/v1/jobs/", json=body, timeout=10)
    assert answer.status_code in (200, 201), answer.text
    return job_id


def job(stack, job_id: str) -> dict | None:
    try:
        found = api(stack, "site").get(f"{stack.url}/api/v1/jobs/", params={"site": SITE, "job_id": job_id},
                                        timeout=5)
    except requests.RequestException:
        return None  # the web is down or restarting: ask again
    if found.status_code != 200:
        return None
    results = found.json()["results"]
    return results[0] if results else None


def wait_state(stack, job_id: str, states: set[str], timeout: float = 60) -> dict:
    def reached():
        current = job(stack, job_id)
        return current if current and current["state"] in states else None
    return wait_until(reached, timeout=timeout, interval=0.3, message=f"job {job_id} to be {states}")


def containers(job_id: str) -> list:
    docker = docker_client_or_skip(images=False)
    return docker.containers.list(all=True, filters={"label": [f"flare-launcher/site={SITE}",
                                                               f"flare-launcher/nvflare-job-id={job_id}"]})


def crash(stack, service: str) -> None:
    """SIGKILL the service's init from the host, as the OOM killer would: not `docker kill`, after
    which Docker counts the container as stopped by hand and its restart policy never applies."""
    container = stack.container(service)
    restarts = container.attrs["RestartCount"]
    os.kill(container.attrs["State"]["Pid"], signal.SIGKILL)

    def back():
        container.reload()
        return container.attrs["RestartCount"] > restarts and container.status == "running"
    wait_until(back, timeout=60, interval=0.2, message=f"{service} to be restarted by its restart policy")


def assert_succeeded(record: dict) -> None:
    assert (record["state"], record["return_code"], record["exit_code"]) == ("succeeded", 0, 0), record


def test_a_job_runs_on_docker_through_the_composed_layout(stack, site):
    job_id = submit(stack, "medium")
    # Checked on the worker: the web never sees the sites' workspaces (their startup kits' keys).
    seen = stack.compose("exec", "-T", "web", "test", "-e", str(stack.workspace), check=False, timeout=60)
    assert seen.returncode == 1, (seen.returncode, seen.stdout, seen.stderr)
    wait_state(stack, job_id, {"running"})
    # The watcher may record the container's start before the launch task has stored its handle,
    # without which the logs API answers "none"; the handle follows within one write.
    running = wait_until(lambda: (job(stack, job_id) or {}).get("handle"), timeout=10, message="the job's handle")
    running = job(stack, job_id)
    assert running["backend"] == "docker" and running["image"] == IMAGE
    staff = api(stack, "staff")
    # The web has no Docker socket: a running job's logs and Test connection ask the worker.
    live = staff.get(f"{stack.url}/api/v1/jobs/{running['id']}/logs/?tail=50", timeout=30)
    assert live.status_code == 200, live.text
    assert live.json()["source"] == "live" and "FAKE-PYTHON ARGV" in live.json()["logs"], live.json()
    checks = staff.post(f"{stack.url}/api/v1/sites/{SITE}/test/", json={}, timeout=30)
    assert checks.status_code == 200, checks.text
    assert {c["name"] for c in checks.json()} >= {"docker daemon", "network", "workspace"}, checks.json()
    assert all(c["ok"] for c in checks.json()), checks.json()
    done = wait_state(stack, job_id, TERMINAL)
    assert_succeeded(done)
    saved = staff.get(f"{stack.url}/api/v1/jobs/{done['id']}/logs/", timeout=10).json()
    assert "FAKE-PYTHON ARGV" in saved["logs"] and "***" in saved["logs"], saved  # credentials redacted
    assert len(containers(job_id)) <= 1


def logged_in(stack) -> requests.Session:
    session = requests.Session()
    login = f"{stack.url}/accounts/login/"
    session.get(login, timeout=10).raise_for_status()
    answer = session.post(login, timeout=10, data={
        "username": "staff", "password": STAFF_PASSWORD, "csrfmiddlewaretoken": session.cookies["csrftoken"]})
    assert answer.status_code == 200 and answer.url.rstrip("/") == stack.url, (answer.status_code, answer.url)
    return session


def test_every_page_answers_in_the_composed_layout(stack, site):
    job_id = submit(stack, "short")
    pk = wait_state(stack, job_id, TERMINAL)["id"]
    anonymous = requests.get(f"{stack.url}/accounts/login/", timeout=10)
    assert anonymous.status_code == 200 and "csrfmiddlewaretoken" in anonymous.text
    session = logged_in(stack)
    pages = ["/", "/tokens/", "/audit/", "/sites/new/", f"/sites/{SITE}/", f"/sites/{SITE}/counts/",
             f"/sites/{SITE}/launch/", f"/sites/{SITE}/history/", f"/sites/{SITE}/settings/",
             f"/sites/{SITE}/tokens/", f"/sites/{SITE}/members/", f"/sites/{SITE}/webhooks/",
             f"/sites/{SITE}/studies/", f"/sites/{SITE}/studies/long/", f"/sites/{SITE}/study_data.yaml",
             f"/jobs/{pk}/", f"/jobs/{pk}/timeline/", f"/jobs/{pk}/logs.txt", "/admin/", "/admin/jobs/job/",
             f"/admin/jobs/job/{pk}/change/", "/admin/jobs/site/", "/api/docs/", "/api/schema/", "/api/v1/"]
    for path in pages:
        page = session.get(f"{stack.url}{path}", timeout=30)
        assert page.status_code == 200, (path, page.status_code, page.text[:500])
        assert "Server Error" not in page.text and "Traceback" not in page.text, path
    # Static files come from the image's collectstatic (WhiteNoise, hashed names).
    assets = re.findall(r'(?:href|src)="(/static/[^"]+)"', session.get(f"{stack.url}/jobs/{pk}/", timeout=10).text)
    assert assets
    for asset in assets:
        assert session.get(f"{stack.url}{asset}", timeout=10).status_code == 200, asset
    check = session.post(f"{stack.url}/sites/{SITE}/settings/check/", timeout=30,
                         data={"csrfmiddlewaretoken": session.cookies["csrftoken"]},
                         headers={"Referer": f"{stack.url}/sites/{SITE}/settings/"})
    assert check.status_code == 200, check.text[:500]
    assert "is writable" in check.text  # the workspace check ran where the workspace is: the worker


def test_web_crash_restarts_and_the_job_record_stays_right(stack, site):
    job_id = submit(stack, "long")
    wait_state(stack, job_id, {"running"})
    crash(stack, "web")
    wait_until(stack.healthy, timeout=60, interval=0.3, message="the web to answer again")
    assert job(stack, job_id)["state"] == "running"
    assert_succeeded(wait_state(stack, job_id, TERMINAL))
    assert len(containers(job_id)) <= 1


def test_worker_crash_mid_launch_and_after_launch(stack, site):
    mid = submit(stack, "short")
    crash(stack, "worker")  # the launch task may be anywhere: queued, taken, the container created
    after = submit(stack, "long")
    wait_state(stack, after, {"running"})
    crash(stack, "worker")  # the job runs on: the watcher records it, not the worker
    # NVFlare's client re-submits a job still queued or starting; the launch is idempotent.
    wait_until(lambda: submit(stack, "short", mid) and (job(stack, mid) or {}).get("state") not in
               ("queued", "starting"), timeout=60, interval=2, message="the job launched before the crash to run")
    if job(stack, mid)["state"] == "running":
        assert len(containers(mid)) == 1  # one workload, however many launch attempts
    assert_succeeded(wait_state(stack, mid, TERMINAL))
    assert_succeeded(wait_state(stack, after, TERMINAL))
    for job_id in (mid, after):
        assert len(containers(job_id)) <= 1, job_id  # never launched twice


def test_an_exit_while_the_watcher_is_down_is_recorded_after_it_restarts(stack, site):
    job_id = submit(stack, "fails")
    wait_state(stack, job_id, {"running"})
    watcher = stack.container("watcher")
    watcher.stop(timeout=0)  # down for as long as the job takes to exit (SIGKILL, no clean lease release)
    try:
        # Exited, or already gone: beat's reconcile on the worker (every 5 s here) may record and remove it first.
        wait_until(lambda: all(c.status == "exited" for c in containers(job_id)),
                   timeout=60, interval=0.3, message="the job's container to exit while the watcher is down")
    finally:
        watcher.start()
    record = wait_state(stack, job_id, TERMINAL, timeout=60)  # the watcher's start, or one reconcile
    assert (record["state"], record["exit_code"], record["return_code"]) == ("failed", 3, 1), record
    staff = api(stack, "staff")
    events = staff.get(f"{stack.url}/api/v1/jobs/{record['id']}/events/", timeout=10).json()
    events = events.get("results", events) if isinstance(events, dict) else events
    assert [e["to_state"] for e in events].count("failed") == 1, events  # recorded once
    # And a crash (restart policy): the restarted watcher takes the site's lease over and records exits.
    job_id = submit(stack, "short")
    wait_state(stack, job_id, {"running"})
    crash(stack, "watcher")
    assert_succeeded(wait_state(stack, job_id, TERMINAL))


def test_postgres_and_redis_restart_and_nothing_is_lost(stack, site):
    if not all_jobs(stack):  # run on its own: one finished job to keep
        wait_state(stack, submit(stack, "short"), TERMINAL)
    before = {j["job_id"]: (j["state"], j["return_code"]) for j in all_jobs(stack)}
    assert before and all(state in TERMINAL for state, _ in before.values()), before
    job_id = submit(stack, "long")
    wait_state(stack, job_id, {"running"})
    stack.compose("restart", "-t", "5", "postgres", "redis", timeout=120)
    wait_until(stack.healthy, timeout=90, interval=0.5, message="the web to reach PostgreSQL and Redis again")
    assert_succeeded(wait_state(stack, job_id, TERMINAL, timeout=90))
    later = submit(stack, "short")  # launches go through the restarted broker
    assert_succeeded(wait_state(stack, later, TERMINAL, timeout=90))
    after = {j["job_id"]: (j["state"], j["return_code"]) for j in all_jobs(stack)}
    assert {k: after.get(k) for k in before} == before  # nothing lost or changed
    assert set(after) == set(before) | {job_id, later}


def all_jobs(stack) -> list[dict]:
    found, url = [], f"{stack.url}/api/v1/jobs/?site={SITE}&page_size=500"
    while url:
        page = api(stack, "staff").get(url, timeout=10).json()
        found += page["results"]
        url = page.get("next")
    return found
