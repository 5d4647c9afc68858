"""GET /metrics: Prometheus text format, computed from the database at scrape time.

Why from the database: the production layout is several processes (`serve --workers 2`, a Celery
worker, `manage.py watch`); counters kept in one process's memory would show one process's share
(and vanish on restart). The database is what they all share, so every series here is a query,
and any web worker answers the same. Four small queries per scrape, each on an index:

- state: jobs by site and state; per site, whether a watcher holds an unexpired lease (and who);
  orphan workloads the last reconcile found.
- events, over the last WINDOW_SECONDS only (bounded cost): launch latency (submit -> first
  state after queued) and time to running (submit -> running) as gauge histograms of the jobs
  submitted in the window, so `histogram_quantile` is used on them directly, without rate();
  jobs that ended in the window by site, state, reason and who recorded the end (`reconcile`
  there is drift a reconcile found and repaired).

Off (404) unless LAUNCHER_METRICS_TOKEN or LAUNCHER_METRICS_ALLOWED_IPS is set. A database error
is reported as flare_launcher_scrape_ok 0, never as a 500.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F, Min, Q
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from backends.base import JobState
from jobs.models import Job, Site

log = logging.getLogger(__name__)
WINDOW_SECONDS = 900
WINDOW_ROWS = 20000  # at most this many newest jobs enter the histograms (a burst cannot make a scrape slow)
LAUNCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
RUNNING_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)
REASON_MAX = 40  # reasons are short codes (OOMKilled, vanished, LaunchError); cap any free text


def _lease_rows(now):
    rows = Site.objects.annotate(orphan_count=Count("orphans")).values_list(
        "name", "watcher_lease__owner", "watcher_lease__expires_at", "orphan_count").order_by("name")
    lease_held = GaugeMetricFamily("flare_launcher_watcher_lease_held",
                                   "1 when a watcher process holds the site's unexpired lease.", labels=["site"])
    holder = GaugeMetricFamily("flare_launcher_watcher_lease_holder",
                               "The process (host:pid:pool) holding the site's unexpired watcher lease.",
                               labels=["site", "holder"])
    orphans = GaugeMetricFamily("flare_launcher_orphan_workloads",
                                "Managed workloads no job claims, as last found by reconcile.", labels=["site"])
    sites = []
    for name, owner, expires_at, orphan_count in rows:
        sites.append(name)
        held = owner is not None and expires_at is not None and expires_at > now
        lease_held.add_metric([name], 1 if held else 0)
        if held:
            holder.add_metric([name, owner], 1)
        orphans.add_metric([name], orphan_count)
    return sites, [lease_held, holder, orphans]


def _jobs_by_state(sites):
    counts = {(site, state.value): 0 for site in sites for state in JobState}
    for site, state, n in Job.objects.values_list("site__name", "state").annotate(n=Count("id")).order_by():
        counts[(site, state)] = n
    family = GaugeMetricFamily("flare_launcher_jobs", "Jobs by site and state.", labels=["site", "state"])
    for (site, state), n in sorted(counts.items()):
        family.add_metric([site, state], n)
    return family


def _histogram(name, documentation, buckets, samples_by_site):
    family = GaugeHistogramMetricFamily(name, documentation, labels=["site"])
    for site, samples in sorted(samples_by_site.items()):
        cumulative = [(str(float(b)), sum(1 for s in samples if s <= b)) for b in buckets]
        cumulative.append(("+Inf", len(samples)))
        family.add_metric([site], cumulative, gsum_value=sum(samples))
    return family


def _latencies(since):
    rows = (Job.objects.filter(created_at__gte=since)
            .annotate(left_queue=Min("events__at", filter=Q(events__from_state=JobState.QUEUED) & ~Q(
                events__to_state=JobState.QUEUED)))
            .values_list("site__name", "created_at", "left_queue", "started_at")
            .order_by("-created_at")[:WINDOW_ROWS])
    launch: dict[str, list[float]] = {}
    running: dict[str, list[float]] = {}
    for site, created_at, left_queue, started_at in rows:
        if left_queue is not None:
            launch.setdefault(site, []).append(max(0.0, (left_queue - created_at).total_seconds()))
        if started_at is not None:
            running.setdefault(site, []).append(max(0.0, (started_at - created_at).total_seconds()))
    window = f"jobs submitted in the last {WINDOW_SECONDS} s"
    return [
        _histogram("flare_launcher_launch_seconds", f"Submit -> launched or launch failed, {window}.",
                   LAUNCH_BUCKETS, launch),
        _histogram("flare_launcher_time_to_running_seconds", f"Submit -> running, {window}.",
                   RUNNING_BUCKETS, running),
    ]


def _ended(since):
    # The event that ended the job (to its final state) says who recorded the end.
    rows = (Job.objects.filter(finished_at__gte=since)
            .filter(events__to_state=F("state")).exclude(events__from_state=F("state"))
            .values_list("site__name", "state", "reason", "events__source").annotate(n=Count("id")).order_by())
    counts: dict[tuple, int] = {}
    for site, state, reason, source, n in rows:
        key = (site, state, (reason or "none")[:REASON_MAX], source)
        counts[key] = counts.get(key, 0) + n
    family = GaugeMetricFamily(
        "flare_launcher_jobs_ended_recent",
        f"Jobs that reached a final state in the last {WINDOW_SECONDS} s, by reason and by who recorded it "
        "(source=reconcile: drift a reconcile found).", labels=["site", "state", "reason", "source"])
    for key, n in sorted(counts.items()):
        family.add_metric(list(key), n)
    return family


class DatabaseCollector:
    def collect(self):
        started = time.perf_counter()
        now = timezone.now()
        since = now - timedelta(seconds=WINDOW_SECONDS)
        families, ok = [], 1
        try:
            sites, lease_families = _lease_rows(now)
            families = [_jobs_by_state(sites), *lease_families, *_latencies(since), _ended(since)]
        except Exception:  # a scrape must answer: the failure is a series to alert on, and a log line
            log.exception("metrics: database query failed")
            families, ok = [], 0
        yield from families
        yield GaugeMetricFamily("flare_launcher_scrape_ok", "1 when the database answered this scrape.", value=ok)
        yield GaugeMetricFamily("flare_launcher_scrape_seconds", "Time spent computing this scrape.",
                                value=time.perf_counter() - started)


REGISTRY = CollectorRegistry(auto_describe=False)
REGISTRY.register(DatabaseCollector())


def metrics_access(request) -> int:
    """200 when allowed, 404 when metrics are off, 401/403 otherwise."""
    token, networks = settings.LAUNCHER_METRICS_TOKEN, settings.LAUNCHER_METRICS_ALLOWED_IPS
    if not token and not networks:
        return 404
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return 200
    if networks:
        try:  # REMOTE_ADDR is the TCP peer, or X-Forwarded-For from LAUNCHER_TRUSTED_PROXIES (serve)
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            return 403
        if any(address in ipaddress.ip_network(n, strict=False) for n in networks):
            return 200
    return 401 if token else 403


@require_GET
def metrics_view(request):
    status = metrics_access(request)
    if status != 200:
        response = HttpResponse(status=status)
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_PLAIN_0_0_4)
