"""Runtime facts for /metrics that no job row holds, written by the process that knows them
(jobs.services.runtime_facts) and read at scrape time (jobs.metrics). Web workers, the Celery
worker and the watcher share only the database, so that is where these counts live: a counter
kept in one process's memory would show that process's share and vanish with it.

Registered with the app by jobs.models (imported at its end)."""

from __future__ import annotations

from django.db import models


class ReconcileStats(models.Model):
    """Per site: how many reconciles ran, how long they took, how much drift they repaired."""

    site = models.OneToOneField("jobs.Site", on_delete=models.CASCADE, related_name="reconcile_stats")
    runs = models.PositiveBigIntegerField(default=0)  # finished or failed
    failures = models.PositiveBigIntegerField(default=0)  # stopped by a backend error
    seconds_total = models.FloatField(default=0)
    drift_total = models.PositiveBigIntegerField(default=0)  # jobs whose state a reconcile corrected
    last_seconds = models.FloatField(null=True)
    last_drift = models.IntegerField(null=True)  # NULL: the last one failed
    last_at = models.DateTimeField(null=True)


class BackendErrorCount(models.Model):
    """Backend errors that ended no job (an engine unreachable while watching, reconciling,
    reading logs, retrying a launch...), counted per site, operation and short reason."""

    site = models.ForeignKey("jobs.Site", on_delete=models.CASCADE, related_name="+")
    operation = models.CharField(max_length=32)
    reason = models.CharField(max_length=40)
    count = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField()
    last_message = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["site", "operation", "reason"], name="backend_error_unique")]


class ProcessGauge(models.Model):
    """A value only one process knows (its open websocket clients), one row per process, refreshed
    while the process lives. A row not refreshed within the gauge's TTL belongs to a process that
    died or stopped: the scrape ignores it, and writers prune it later."""

    name = models.CharField(max_length=40)
    process = models.CharField(max_length=200)  # host:pid
    value = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "process"], name="process_gauge_unique")]
