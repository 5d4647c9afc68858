"""A site's watcher is replaced when its settings change (jobs.watchers.WatcherPool); the job
followers it started must live on under its successor. The old watcher, stopping, used to stop a
follower the new one had just found running, and nothing restarted it until the job ended: no live
output, progress or usage for the rest of the job (a flaky browser test caught it)."""

from __future__ import annotations

import pytest

from jobs.models import Site
from jobs.services.launching import job_apply_observation
from jobs.watchers import LogFollowers
from tests.conftest import process_settings
from tests.jobs.test_usage import _process_job
from tests.util import wait_until


@pytest.mark.django_db(transaction=True)
def test_a_replaced_watcher_leaves_running_the_follower_its_successor_found(workspace, settings):
    settings.LAUNCHER_RESOURCE_SAMPLE_SECONDS = 0.2
    site = Site.objects.create(name="site-1", backend="process", process=process_settings(workspace))
    backend, job, handle = _process_job(site, "handover")
    job = job_apply_observation(backend.inspect(handle), source="watcher", job=job)  # running, with its handle
    old, new = LogFollowers("site-1"), LogFollowers("site-1")
    try:
        old.track(job, backend)
        follower = LogFollowers._running[job.pk]
        new.track(job, backend)  # the successor's first pass: the job runs, a follower is there
        old.drop_all()  # the replaced watcher's thread ends
        assert LogFollowers._running.get(job.pk) is follower and not follower.stop.is_set()

        samples = []

        def sampled_again():
            job.refresh_from_db()
            if job.usage and job.usage["sampled_at"] not in samples:
                samples.append(job.usage["sampled_at"])
            return len(samples) >= 2
        wait_until(sampled_again, timeout=15, message="the follower to keep sampling under the new watcher")
        new.drop_all()
        assert follower.stop.is_set() and job.pk not in LogFollowers._running
    finally:
        new.drop_all()
        old.drop_all()
        backend.terminate(handle)
