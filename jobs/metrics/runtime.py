"""Series of the launcher's own processes, from rows they keep in the database: per site the
watcher lease and stream, reconcile timings and drift, orphan workloads (one query); backend errors
that ended no job (one query); open websocket clients summed over live web processes (one query)."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from jobs.models import BackendErrorCount, ProcessGauge, Site
from jobs.services.runtime_facts import WEBSOCKET_CLIENTS, websocket_ttl_seconds


def site_rows(now):
    """Everything per site in one query: the lease, the watcher's stream, reconciles, orphans."""
    rows = Site.objects.annotate(orphan_count=Count("orphans")).values_list(
        "name", "watcher_lease__owner", "watcher_lease__expires_at", "health__watcher_connected_at",
        "reconcile_stats__runs", "reconcile_stats__failures", "reconcile_stats__seconds_total",
        "reconcile_stats__drift_total", "reconcile_stats__last_seconds", "reconcile_stats__last_drift",
        "reconcile_stats__last_at", "orphan_count").order_by("name")
    site = ["site"]
    lease_held = GaugeMetricFamily("flare_launcher_watcher_lease_held",
                                   "1 when a watcher process holds the site's unexpired lease.", labels=site)
    holder = GaugeMetricFamily("flare_launcher_watcher_lease_holder",
                               "The process (host:pid:pool) holding the site's unexpired watcher lease.",
                               labels=["site", "holder"])
    connected = GaugeMetricFamily("flare_launcher_watcher_connected",
                                  "1 when the lease holder's change stream is connected to the engine.", labels=site)
    orphans = GaugeMetricFamily("flare_launcher_orphan_workloads",
                                "Managed workloads no job claims, as last found by reconcile.", labels=site)
    durations = SummaryMetricFamily("flare_launcher_reconcile_seconds",
                                    "Time spent reconciling the site (count: reconciles run, failed ones too).",
                                    labels=site)
    failures = CounterMetricFamily("flare_launcher_reconcile_failures",
                                   "Reconciles stopped by a backend error (the engine unreachable...).", labels=site)
    drift = CounterMetricFamily("flare_launcher_reconcile_drift",
                                "Jobs whose state a reconcile corrected (an exit or a disappearance the stream "
                                "missed, a launch whose record was lost).", labels=site)
    last_seconds = GaugeMetricFamily("flare_launcher_reconcile_last_seconds",
                                     "Duration of the site's latest reconcile.", labels=site)
    last_drift = GaugeMetricFamily("flare_launcher_reconcile_last_drift",
                                   "Jobs the site's latest successful reconcile corrected.", labels=site)
    last_at = GaugeMetricFamily("flare_launcher_reconcile_last_timestamp_seconds",
                                "When the site's latest reconcile ended (Unix time).", labels=site)
    sites = []
    for (name, owner, expires_at, connected_at, runs, failed, seconds_total, drift_total, last_s, last_d, last_time,
         orphan_count) in rows:
        sites.append(name)
        held = owner is not None and expires_at is not None and expires_at > now
        lease_held.add_metric([name], 1 if held else 0)
        if held:
            holder.add_metric([name, owner], 1)
        # A stream is connected only while its process lives: a killed watcher leaves connected_at
        # set, but its lease then expires.
        connected.add_metric([name], 1 if held and connected_at is not None else 0)
        orphans.add_metric([name], orphan_count)
        durations.add_metric([name], count_value=runs or 0, sum_value=seconds_total or 0.0)
        failures.add_metric([name], failed or 0)
        drift.add_metric([name], drift_total or 0)
        if last_s is not None:
            last_seconds.add_metric([name], last_s)
            last_at.add_metric([name], last_time.timestamp())
        if last_d is not None:
            last_drift.add_metric([name], last_d)
    return sites, [lease_held, holder, connected, orphans, durations, failures, drift, last_seconds, last_drift,
                   last_at]


def backend_errors():
    family = CounterMetricFamily(
        "flare_launcher_backend_errors",
        "Backend errors that ended no job, by the operation that met them (watch, reconcile, logs, launch "
        "retried, cleanup) and reason (engine_unreachable, engine_error_retryable, engine_error).",
        labels=["site", "operation", "reason"])
    rows = BackendErrorCount.objects.values_list("site__name", "operation", "reason", "count").order_by(
        "site__name", "operation", "reason")
    for site, operation, reason, count in rows:
        family.add_metric([site, operation, reason], count)
    return family


def websocket_clients(now):
    fresh = now - timedelta(seconds=websocket_ttl_seconds())
    totals = ProcessGauge.objects.filter(name=WEBSOCKET_CLIENTS, updated_at__gte=fresh).aggregate(
        clients=Sum("value"), processes=Count("id"))
    return [
        GaugeMetricFamily("flare_launcher_websocket_clients",
                          "Open dashboard websockets, summed over the live web processes.",
                          value=totals["clients"] or 0),
        GaugeMetricFamily("flare_launcher_websocket_processes",
                          "Web processes that reported their websocket clients recently (any with clients open).",
                          value=totals["processes"] or 0),
    ]
