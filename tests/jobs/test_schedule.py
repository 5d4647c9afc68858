"""Celery beat runs the reconcile and the retention pruning; the tasks it names exist."""

import pytest
from django.conf import settings

from launcher_site.celery import app

pytestmark = pytest.mark.embedded


def test_beat_schedules_reconcile_and_prune_with_registered_tasks():
    app.loader.import_default_modules()  # what a worker / beat does at start-up (autodiscovery)
    schedule = app.conf.beat_schedule
    reconcile = schedule["reconcile-every-site"]
    assert reconcile["schedule"] == settings.LAUNCHER_RECONCILE_SECONDS
    for entry in schedule.values():
        assert entry["task"] in app.tasks, entry["task"]


@pytest.mark.django_db
def test_prune_task_prunes_through_the_service():
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import Job, JobEvent, Site
    from jobs.tasks import jobs_prune_task

    site = Site.objects.create(name="site-1")
    old = Job.objects.create(site=site, job_id="old", backend="process", state="succeeded", logs_tail="x",
                             finished_at=timezone.now() - timedelta(days=settings.LAUNCHER_RETENTION_DAYS + 1))
    JobEvent.objects.create(job=old, to_state="succeeded", source="watcher")
    assert jobs_prune_task() == 1
    assert not JobEvent.objects.filter(job=old).exists()
