"""The heartbeat catch-up's question: what did an open socket miss in a window of sequence numbers?"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs.models import Job, JobEvent, Site
from jobs.services.lifecycle import job_observe, verdict
from jobs.services.resume import latest_seq, site_jobs_missed

pytestmark = pytest.mark.django_db


@pytest.fixture
def window():
    site = Site.objects.create(name="site-1")
    other = Site.objects.create(name="site-2")
    jobs = [Job.objects.create(site=site, job_id=f"j{i}", backend="process") for i in range(2)]
    theirs = Job.objects.create(site=other, job_id="theirs", backend="process")
    since = latest_seq()
    job_observe(jobs[0].pk, verdict("starting"), source="watcher")
    job_observe(theirs.pk, verdict("starting"), source="watcher")  # another site's: not counted
    job_observe(jobs[1].pk, verdict("running"), source="watcher")
    job_observe(jobs[0].pk, verdict("failed"), source="watcher")
    return site, jobs, since, latest_seq()


def test_every_event_received_live_is_answered_by_one_count(window):
    site, _, since, until = window
    with CaptureQueriesContext(connection) as queries:
        reply = site_jobs_missed(site=site, since=since, until=until, known={}, received=3)
    assert reply.updates == [] and reply.last == until
    assert len(queries) == 2  # the window's count and the latest seq; no per-job query, no serialising


def test_a_missed_event_is_sent_with_the_jobs_current_state(window):
    site, jobs, since, until = window
    last_of_j0 = JobEvent.objects.filter(job=jobs[0]).latest("id").pk
    # Three site events in the window, two came live: j1's change and j0's first one.
    reply = site_jobs_missed(site=site, since=since, until=until, known={jobs[1].pk: until}, received=2)
    assert [(u["job"]["job_id"], u["job"]["state"], u["seq"]) for u in reply.updates] == [("j0", "failed", last_of_j0)]
