"""Retention prunes only what finished long ago, and never anything in flight."""

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job, JobEvent, Site
from jobs.services.retention import jobs_prune

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def make_job(site, job_id, state, finished_days_ago=None):
    finished = timezone.now() - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
    job = Job.objects.create(site=site, job_id=job_id, backend="process", state=state, finished_at=finished,
                             logs_tail="line 1\nline 2")
    JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api")
    return job


def test_old_finished_jobs_lose_events_and_logs_but_keep_their_record():
    site = Site.objects.create(name="site-1")
    old = make_job(site, "old", "succeeded", finished_days_ago=40)
    recent = make_job(site, "recent", "failed", finished_days_ago=5)
    running = make_job(site, "running", "running")
    report = jobs_prune(older_than_days=30)
    assert (report.jobs, report.events) == (1, 1)
    old.refresh_from_db(), recent.refresh_from_db(), running.refresh_from_db()
    assert old.logs_tail == "" and not old.events.exists() and old.state == "succeeded"
    assert recent.logs_tail and recent.events.exists()
    assert running.logs_tail and running.events.exists()


def test_zero_days_keeps_everything():
    site = Site.objects.create(name="site-1")
    make_job(site, "old", "succeeded", finished_days_ago=400)
    assert jobs_prune(older_than_days=0).jobs == 0
    assert JobEvent.objects.count() == 1
