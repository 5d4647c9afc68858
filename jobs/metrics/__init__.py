"""GET /metrics: Prometheus text format, computed from the database at scrape time.

Why from the database: the production layout is several processes (`serve --workers 2`, a Celery
worker, `manage.py watch`); counters kept in one process's memory would show one process's share
(and vanish on restart). The database is what they all share, so every series here is a query,
and any web worker answers the same. Facts that no job row holds are written to small rows by the
process that knows them (jobs.runtime_models, jobs.services.runtime_facts). Seven small queries per
scrape, each bounded:

- runtime.py: per site (one query), the watcher lease and whether its stream is connected,
  reconcile runs, duration and drift, orphan workloads; backend errors that ended no job; open
  websocket clients summed over the web processes that reported within a TTL (a dead process's
  row is ignored).
- jobs.py: jobs by site and state; over the last WINDOW_SECONDS only (bounded cost), launch latency
  (submit -> first state after queued), time to running and exit -> publish latency as gauge
  histograms, so `histogram_quantile` is used on them directly, without rate(); jobs that ended in
  the window by site, state, reason and who recorded the end (`reconcile` there is drift a
  reconcile found and repaired).

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
from django.http import HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from jobs.metrics import jobs, runtime

log = logging.getLogger(__name__)


class DatabaseCollector:
    def collect(self):
        started = time.perf_counter()
        now = timezone.now()
        since = now - timedelta(seconds=jobs.WINDOW_SECONDS)
        families, ok = [], 1
        try:
            sites, site_families = runtime.site_rows(now)
            families = [jobs.jobs_by_state(sites), *site_families, *jobs.latencies(since), jobs.exit_latency(since),
                        jobs.ended(since), runtime.backend_errors(), *runtime.websocket_clients(now)]
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
