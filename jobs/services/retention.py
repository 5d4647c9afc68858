"""jobs_prune: drop the events and logs tails of jobs that finished long ago."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs.models import TERMINAL, Job, JobEvent, JobLog

BATCH = 1000  # rows per transaction, so pruning never holds a long lock


@dataclass
class PruneReport:
    jobs: int = 0
    events: int = 0
    logs: int = 0  # whole outputs (jobs.services.job_logs)


def jobs_prune(*, older_than_days: int | None = None) -> PruneReport:
    """For jobs that reached a terminal state more than `older_than_days` ago (default
    LAUNCHER_RETENTION_DAYS), delete their events and whole output and clear their logs tail. The job row (who,
    what, state, return code) stays. Jobs in flight are never touched. 0 days disables pruning."""
    days = settings.LAUNCHER_RETENTION_DAYS if older_than_days is None else older_than_days
    report = PruneReport()
    if days <= 0:
        return report
    cutoff = timezone.now() - timedelta(days=days)
    expired = Job.objects.filter(state__in=TERMINAL, finished_at__lt=cutoff)
    while True:
        with transaction.atomic():
            ids = list(expired.filter(pk__in=JobEvent.objects.values("job_id")).values_list("pk", flat=True)[:BATCH])
            ids += list(expired.exclude(logs_tail="").exclude(pk__in=ids).values_list("pk", flat=True)[:BATCH])
            ids += list(expired.filter(pk__in=JobLog.objects.values("job_id")).exclude(pk__in=ids)
                        .values_list("pk", flat=True)[:BATCH])
            if not ids:
                return report
            report.events += JobEvent.objects.filter(job_id__in=ids).delete()[0]
            report.logs += JobLog.objects.filter(job_id__in=ids).delete()[0]
            Job.objects.filter(pk__in=ids).update(logs_tail="")
            report.jobs += len(set(ids))
