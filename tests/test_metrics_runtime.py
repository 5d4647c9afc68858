"""/metrics series that come from the launcher's own processes, each produced by the real thing:
a reconcile that finds a missed exit (process backend), an unreachable engine, websocket clients
connected through the ASGI app, and (docker) a watcher streaming the real dockerd through a proxy
the test cuts: connected, exit -> publish latency, errors that ended no job, drift on reconnect."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from jobs.models import BackendErrorCount, ProcessGauge, Site
from jobs.services import runtime_facts
from jobs.services.reconciliation import site_reconcile, sites_reconcile
from tests.live.conftest import free_port, job_state, session_cookie, ws_headers
from tests.live.test_docker_watch import daemon, docker_site, proxy  # noqa: F401 (fixtures)
from tests.live.test_reconcile import exited, launched
from tests.test_metrics import TOKEN, scrape, value
from tests.util import async_wait_until, wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def token(settings):
    settings.LAUNCHER_METRICS_TOKEN = TOKEN
    settings.LAUNCHER_METRICS_ALLOWED_IPS = []


def test_reconcile_duration_drift_and_exit_latency_of_a_missed_exit(process_site, workspace, client):
    s = scrape(client)
    assert value(s, "flare_launcher_reconcile_seconds_count", site="site-1") == 0
    assert value(s, "flare_launcher_reconcile_last_seconds", site="site-1") is None

    job = launched(process_site, "missed-1", "sleep=0.5")
    wait_until(lambda: exited(workspace, job.handle["ref"]), timeout=15, message="the job to exit")
    report = site_reconcile(site=process_site)  # no watcher: the exit is drift
    assert report.changed and job_state(job.pk) == "succeeded"
    site_reconcile(site=process_site)  # nothing left to repair

    s = scrape(client)
    assert value(s, "flare_launcher_reconcile_seconds_count", site="site-1") == 2
    assert 0 < value(s, "flare_launcher_reconcile_seconds_sum", site="site-1") < 30
    assert value(s, "flare_launcher_reconcile_drift_total", site="site-1") == 1
    assert value(s, "flare_launcher_reconcile_last_drift", site="site-1") == 0
    assert value(s, "flare_launcher_reconcile_failures_total", site="site-1") == 0
    assert abs(value(s, "flare_launcher_reconcile_last_timestamp_seconds", site="site-1")
               - timezone.now().timestamp()) < 30
    # The exit's own time (the runner's) -> recorded by the reconcile that found it.
    exit_latency = dict(site="site-1", source="reconcile")
    assert value(s, "flare_launcher_exit_to_publish_seconds_gcount", **exit_latency) == 1
    assert 0 <= value(s, "flare_launcher_exit_to_publish_seconds_gsum", **exit_latency) < 30
    assert value(s, "flare_launcher_exit_to_publish_seconds_bucket", **exit_latency, le="+Inf") == 1


def test_unreachable_engine_counts_as_a_backend_error_and_a_failed_reconcile(db, client, tmp_path):
    Site.objects.create(name="dk-down", backend="docker", docker={
        "workspace": str(tmp_path), "docker_host": f"tcp://127.0.0.1:{free_port()}", "timeout": 2})
    sites_reconcile()  # the engine does not answer: logged, skipped, counted
    s = scrape(client)
    errors = dict(site="dk-down", operation="reconcile", reason="engine_unreachable")
    assert value(s, "flare_launcher_backend_errors_total", **errors) == 1
    assert value(s, "flare_launcher_reconcile_failures_total", site="dk-down") == 1
    assert value(s, "flare_launcher_reconcile_seconds_count", site="dk-down") == 1
    assert value(s, "flare_launcher_reconcile_last_drift", site="dk-down") is None

    # Repeats within ERROR_FLUSH_SECONDS are written together, but none is lost.
    sites_reconcile()
    sites_reconcile()
    wait_until(lambda: value(scrape(client), "flare_launcher_backend_errors_total", **errors) == 3,
               timeout=runtime_facts.ERROR_FLUSH_SECONDS + 10, message="the repeated errors to be written")
    row = BackendErrorCount.objects.get(site__name="dk-down")
    assert "127.0.0.1" in row.last_message
    assert value(scrape(client), "flare_launcher_reconcile_failures_total", site="dk-down") == 3


@pytest.mark.asyncio
async def test_websocket_clients_are_counted_per_process_and_summed(users, settings, monkeypatch):
    from jobs.models import Role, SiteMembership
    from launcher_site.asgi import application
    from tests.live.communicator import WebsocketCommunicator

    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1  # heartbeats refresh the process's row
    # A fresh count for this process, written at most every 0.5 s (our own throttle, not an engine's).
    monkeypatch.setattr(runtime_facts, "websocket_clients", runtime_facts._ClientCount())
    monkeypatch.setattr(runtime_facts._ClientCount, "WRITE_SECONDS", 0.5)

    def setup():
        site = Site.objects.create(name="site-ws")
        SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
        now = timezone.now()
        # Another web process's row (fresh) and a dead one's (stale, ignored).
        ProcessGauge.objects.create(name=runtime_facts.WEBSOCKET_CLIENTS, process="web-2:77", value=3, updated_at=now)
        ProcessGauge.objects.create(name=runtime_facts.WEBSOCKET_CLIENTS, process="web-3:78", value=100,
                                    updated_at=now - timedelta(seconds=runtime_facts.websocket_ttl_seconds() + 5))
        return session_cookie(users["viewer"]), session_cookie(users["outsider"])

    cookie, outsider = await sync_to_async(setup)()
    client = Client()

    async def clients():
        s = await sync_to_async(scrape)(client)
        return value(s, "flare_launcher_websocket_clients"), value(s, "flare_launcher_websocket_processes")

    async def until(expected, message):
        async def counted():
            return await clients() == expected
        await async_wait_until(counted, timeout=15, interval=0.1, message=message)

    assert await clients() == (3, 1)
    sockets = []
    for _ in range(2):
        ws = WebsocketCommunicator(application, "/ws/sites/site-ws/jobs/", headers=ws_headers(cookie))
        assert (await ws.connect(timeout=5))[0]
        sockets.append(ws)
    refused = WebsocketCommunicator(application, "/ws/sites/site-ws/jobs/", headers=ws_headers(outsider))
    assert (await refused.connect(timeout=5))[0]
    assert await refused.receive_output(timeout=5) == {"type": "websocket.close", "code": 4403}
    await until((3 + 2, 2), "two accepted sockets counted, the refused one not")

    await sockets[0].disconnect()
    await until((3 + 1, 2), "one socket closed")
    await sockets[1].disconnect()
    assert await clients() == (3, 2)  # the last close is written at once (no socket is left to refresh it)


@pytest.mark.docker
def test_watcher_connected_exit_latency_errors_and_drift_against_the_real_dockerd(request, client, settings):
    from jobs.watchers import WatcherPool
    from tests.live.test_docker_watch import launched as docker_launched

    # The watcher tests' fixtures: a docker site whose docker_host is a proxy this test can cut.
    dk_site, cut_proxy, engine = (request.getfixturevalue(name) for name in ("docker_site", "proxy", "daemon"))
    settings.LAUNCHER_LOG_FOLLOWERS = 0
    site = dict(site=dk_site.name)
    pool = WatcherPool(lease_seconds=3).start()
    try:
        wait_until(lambda: value(scrape(client), "flare_launcher_watcher_connected", **site) == 1, timeout=20,
                   message="the watcher to connect")
        s = scrape(client)
        assert value(s, "flare_launcher_watcher_lease_held", **site) == 1
        assert value(s, "flare_launcher_reconcile_seconds_count", **site) >= 1  # on connect
        assert value(s, "flare_launcher_reconcile_last_drift", **site) == 0

        # An exit the stream reports: engine exit time -> recorded and published, by the watcher.
        job = docker_launched(dk_site, "dk-exit")
        wait_until(lambda: job_state(job.pk) == "running", timeout=20, message="the job to run")
        engine.containers.get(job.handle["ref"]).kill()
        wait_until(lambda: job_state(job.pk) == "failed", timeout=20, message="the exit to be recorded")
        s = scrape(client)
        live = dict(**site, source="watcher")
        assert value(s, "flare_launcher_exit_to_publish_seconds_gcount", **live) == 1
        assert 0 <= value(s, "flare_launcher_exit_to_publish_seconds_gsum", **live) < 10

        # The engine goes away: the stream is down, the errors are counted, no job ends.
        other = docker_launched(dk_site, "dk-missed")
        wait_until(lambda: job_state(other.pk) == "running", timeout=20, message="the second job to run")
        cut_proxy.cut()
        wait_until(lambda: value(scrape(client), "flare_launcher_watcher_connected", **site) == 0, timeout=20,
                   message="the stream to be reported down")
        wait_until(lambda: value(scrape(client), "flare_launcher_reconcile_failures_total", **site), timeout=30,
                   message="a reconnect's reconcile to fail")
        s = scrape(client)
        assert value(s, "flare_launcher_watcher_lease_held", **site) == 1  # its process is alive
        errors = {labels: n for (name, labels), n in s.items() if name == "flare_launcher_backend_errors_total"}
        operations = {dict(labels)["operation"] for labels in errors if dict(labels)["site"] == dk_site.name}
        assert {"watch", "reconcile"} <= operations, errors
        assert job_state(other.pk) == "running"

        # It dies while nobody can see it; the reconcile on reconnect finds it: drift.
        engine.containers.get(other.handle["ref"]).kill()
        wait_until(lambda: engine.containers.get(other.handle["ref"]).status == "exited", timeout=20,
                   message="the container to exit")
        cut_proxy.restore()
        wait_until(lambda: job_state(other.pk) == "failed", timeout=45, message="the missed exit to be recorded")
        wait_until(lambda: value(scrape(client), "flare_launcher_watcher_connected", **site) == 1, timeout=20,
                   message="the watcher to be streaming again")
        s = scrape(client)
        assert value(s, "flare_launcher_reconcile_drift_total", **site) == 1
        assert value(s, "flare_launcher_exit_to_publish_seconds_gcount", **site, source="reconcile") == 1
    finally:
        pool.stop()
    s = scrape(client)
    assert value(s, "flare_launcher_watcher_lease_held", **site) == 0  # released on stop
    assert value(s, "flare_launcher_watcher_connected", **site) == 0



def test_a_pod_exit_carries_the_container_finish_time():
    from backends.kubernetes import manifests as km
    from backends.kubernetes.pending import pod_observation

    def pod(phase: str) -> dict:
        return {"metadata": {"name": "p-1", "annotations": {km.MAIN_CONTAINER_ANNOTATION: "job"}},
                "status": {"phase": phase, "containerStatuses": [
                    {"name": "job", "state": {"terminated": {"exitCode": 1 if phase == "Failed" else 0,
                                                             "finishedAt": "2026-12-06T10:00:05Z"}}}]}}

    for phase in ("Succeeded", "Failed"):
        assert pod_observation(pod(phase)).at == 1796551205.0  # 2026-12-06T10:00:05Z
