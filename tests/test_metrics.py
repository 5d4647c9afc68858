"""GET /metrics: off unless configured, token or address protected, series computed from the
database (so every process answers the same), cheap, and never a 500."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import (
    BackendErrorCount,
    Job,
    JobEvent,
    OrphanWorkload,
    ProcessGauge,
    ReconcileStats,
    Site,
    SiteHealth,
    WatcherLease,
)
from jobs.services.lifecycle import job_create, job_observe, verdict

TOKEN = "metrics-token-0123456789"


def scrape(client, **headers) -> dict:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}", **headers})
    assert response.status_code == 200, response.status_code
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def token(settings):
    settings.LAUNCHER_METRICS_TOKEN = TOKEN
    settings.LAUNCHER_METRICS_ALLOWED_IPS = []


@pytest.mark.django_db
def test_off_without_token_or_addresses(client, settings):
    settings.LAUNCHER_METRICS_TOKEN, settings.LAUNCHER_METRICS_ALLOWED_IPS = "", []
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404


@pytest.mark.django_db
def test_token_required_when_set(client, token):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.django_db
def test_allowed_addresses(client, settings):
    settings.LAUNCHER_METRICS_TOKEN = ""
    settings.LAUNCHER_METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    settings.LAUNCHER_METRICS_TOKEN = TOKEN  # either one is enough
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def _job(site, job_id, *states, source="watcher", **final):
    job = job_create(site=site, job_id=job_id, source="api", message="", backend=site.backend)
    for state in states[:-1]:
        job_observe(job.pk, verdict(state), source="worker")
    if states:
        job_observe(job.pk, verdict(states[-1], **final), source=source)
    return job


@pytest.mark.django_db
def test_series_from_the_database(client, token):
    site = Site.objects.create(name="site-1")
    Site.objects.create(name="site-2")
    _job(site, "ok", "starting", "running", "succeeded", return_code=0)
    _job(site, "bad", "launch_failed", source="worker", reason="LaunchError")
    _job(site, "gone", "starting", "running", "lost", source="reconcile", reason="vanished")
    _job(site, "waiting")
    # Submitted 3 s before they left the queue.
    Job.objects.update(created_at=F("created_at") - timedelta(seconds=3))
    WatcherLease.objects.create(site=site, owner="host:42:abc", expires_at=timezone.now() + timedelta(seconds=30))
    OrphanWorkload.objects.create(site=site, ref="stray-1", state="running")

    s = scrape(client)
    assert value(s, "flare_launcher_scrape_ok") == 1
    assert value(s, "flare_launcher_jobs", site="site-1", state="succeeded") == 1
    assert value(s, "flare_launcher_jobs", site="site-1", state="queued") == 1
    assert value(s, "flare_launcher_jobs", site="site-1", state="running") == 0
    assert value(s, "flare_launcher_jobs", site="site-2", state="running") == 0  # every site, every state
    assert value(s, "flare_launcher_watcher_lease_held", site="site-1") == 1
    assert value(s, "flare_launcher_watcher_lease_held", site="site-2") == 0
    assert value(s, "flare_launcher_watcher_lease_holder", site="site-1", holder="host:42:abc") == 1
    assert value(s, "flare_launcher_orphan_workloads", site="site-1") == 1
    # Launch latency: 3 jobs left the queue, each ~3 s after submit.
    assert value(s, "flare_launcher_launch_seconds_bucket", site="site-1", le="2.0") == 0
    assert value(s, "flare_launcher_launch_seconds_bucket", site="site-1", le="5.0") == 3
    assert value(s, "flare_launcher_launch_seconds_gcount", site="site-1") == 3
    assert 9 <= value(s, "flare_launcher_launch_seconds_gsum", site="site-1") < 12
    assert value(s, "flare_launcher_time_to_running_seconds_gcount", site="site-1") == 2
    ended = dict(site="site-1")
    assert value(s, "flare_launcher_jobs_ended_recent", **ended, state="succeeded", reason="none", source="watcher") == 1
    assert value(s, "flare_launcher_jobs_ended_recent", **ended, state="launch_failed", reason="LaunchError",
                 source="worker") == 1
    assert value(s, "flare_launcher_jobs_ended_recent", **ended, state="lost", reason="vanished", source="reconcile") == 1

    # An expired lease is not held; jobs outside the window leave the histograms.
    WatcherLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    Job.objects.update(created_at=F("created_at") - timedelta(hours=1), finished_at=F("finished_at") - timedelta(hours=1))
    s = scrape(client)
    assert value(s, "flare_launcher_watcher_lease_held", site="site-1") == 0
    assert value(s, "flare_launcher_watcher_lease_holder", site="site-1", holder="host:42:abc") is None
    assert value(s, "flare_launcher_launch_seconds_gcount", site="site-1") is None
    assert value(s, "flare_launcher_jobs_ended_recent", **ended, state="lost", reason="vanished", source="reconcile") is None
    assert value(s, "flare_launcher_jobs", site="site-1", state="lost") == 1


@pytest.mark.django_db
def test_database_error_is_a_series_not_a_500(client, token):
    Site.objects.create(name="site-1")
    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("ALTER TABLE jobs_job RENAME TO jobs_job_gone")
    s = scrape(client)
    assert value(s, "flare_launcher_scrape_ok") == 0
    assert value(s, "flare_launcher_jobs", site="site-1", state="queued") is None


@pytest.mark.django_db
def test_scrape_cost_with_10k_jobs(client, token, django_assert_max_num_queries):
    sites = [Site.objects.create(name=f"site-{n}") for n in range(5)]
    now = timezone.now()
    states = ["succeeded", "failed", "running", "lost", "launch_failed"]
    Job.objects.bulk_create(Job(site=sites[n % 5], job_id=f"job-{n}", backend="process", state=states[n % 5],
                                reason="vanished" if n % 5 == 3 else "", workload=f"w-{n}")
                            for n in range(10_000))
    # Half of them inside the window, half long before it.
    jobs = list(Job.objects.values_list("pk", "state"))
    Job.objects.filter(pk__in=[pk for pk, _ in jobs[::2]]).update(created_at=now - timedelta(days=2))
    Job.objects.exclude(state="running").update(started_at=now, finished_at=now, exited_at=now - timedelta(seconds=0.3))
    Job.objects.filter(state="running").update(started_at=now)
    JobEvent.objects.bulk_create(
        [JobEvent(job_id=pk, from_state="", to_state="queued", source="api") for pk, _ in jobs]
        + [JobEvent(job_id=pk, from_state="queued", to_state="starting", source="worker") for pk, _ in jobs]
        + [JobEvent(job_id=pk, from_state="starting", to_state=state, source="watcher") for pk, state in jobs])
    for site in sites:  # the runtime facts every site has after a while
        ReconcileStats.objects.create(site=site, runs=100, seconds_total=3.0, last_seconds=0.03, last_drift=0, last_at=now)
        for operation in ("watch", "reconcile", "logs"):
            BackendErrorCount.objects.create(site=site, operation=operation, reason="engine_unreachable", count=3,
                                             last_at=now)
    ProcessGauge.objects.bulk_create(ProcessGauge(name="websocket_clients", process=f"h:{n}", value=10, updated_at=now)
                                     for n in range(4))
    scrape(client)  # warm
    timings = []
    for _ in range(5):
        with django_assert_max_num_queries(7):  # per scrape
            started = time.perf_counter()
            s = scrape(client)
            timings.append(time.perf_counter() - started)
    assert sum(value(s, "flare_launcher_jobs", site=f"site-{n}", state=st) for n in range(5) for st in states) == 10_000
    assert value(s, "flare_launcher_launch_seconds_gcount", site="site-0") == 1000
    assert value(s, "flare_launcher_exit_to_publish_seconds_gcount", site="site-0", source="watcher") == 2000
    assert value(s, "flare_launcher_websocket_clients") == 40
    assert value(s, "flare_launcher_reconcile_seconds_count", site="site-4") == 100
    median = sorted(timings)[2]
    print(f"\nscrape with 10k jobs / 30k events (5k in window): median {median * 1000:.1f} ms, "
          f"max {max(timings) * 1000:.1f} ms")
    assert median < 1.0


@pytest.mark.django_db
def test_grafana_dashboard_uses_only_series_the_endpoint_has(client, token):
    import json
    import re
    from pathlib import Path

    from backends.base import EngineUnreachable
    from jobs.services.runtime_facts import backend_error_recorded, reconcile_recorded, websocket_clients

    site = Site.objects.create(name="site-1")
    job = _job(site, "ok", "starting", "running", "failed", reason="OOMKilled")
    Job.objects.filter(pk=job.pk).update(exited_at=F("finished_at") - timedelta(seconds=1))
    WatcherLease.objects.create(site=site, owner="h:1:a", expires_at=timezone.now() + timedelta(seconds=30))
    SiteHealth.objects.create(site=site, watcher_connected_at=timezone.now())
    reconcile_recorded(site_pk=site.pk, seconds=0.2, drift=1)
    backend_error_recorded(EngineUnreachable("Docker daemon at x: connection refused"), operation="watch",
                           site_pk=site.pk)
    websocket_clients.write()
    exposed = {name for name, _ in scrape(client)}
    dashboard = json.loads((Path(__file__).parent.parent / "deploy/grafana/flare-launcher.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"flare_launcher_\w+", target["expr"])}
    assert used and used <= exposed, used - exposed


def test_a_bad_allowed_address_stops_start_up_naming_the_variable():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "LAUNCHER_METRICS_ALLOWED_IPS": "127.0.0.1,not-an-ip"}
    env.pop("DATABASE_URL", None), env.pop("REDIS_URL", None)
    result = subprocess.run([sys.executable, "-c", "import launcher_site.settings"], env=env, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).parent.parent)
    assert result.returncode != 0
    assert "LAUNCHER_METRICS_ALLOWED_IPS: 'not-an-ip' is not an IP address or CIDR" in result.stderr
