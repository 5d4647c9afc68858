"""The embedded default's worker (launcher_site.embedded): Celery's embeddable WorkController in a
thread of this process, on the in-memory transport; it runs tasks off the caller's thread and stops
cleanly."""

from __future__ import annotations

import threading

import pytest
from celery.signals import task_postrun

from launcher_site.embedded import embedded_worker

pytestmark = pytest.mark.embedded


@pytest.mark.django_db(transaction=True)  # the worker's threads use their own database connections
def test_embedded_worker_runs_tasks_off_this_thread_and_stops(settings):
    from jobs.tasks import jobs_prune_task

    settings.LAUNCHER_RETENTION_DAYS = 30
    done: dict[str, tuple[object, str]] = {}
    finished = threading.Event()

    def record(sender=None, retval=None, **kwargs):
        done[sender.name] = (retval, threading.current_thread().name)
        if "jobs.tasks.jobs_prune_task" in done:
            finished.set()

    task_postrun.connect(record, weak=False)
    before = {t.name for t in threading.enumerate()}
    try:
        with embedded_worker(concurrency=2):
            jobs_prune_task.delay()
            assert finished.wait(30), done
    finally:
        task_postrun.disconnect(record)
    assert done["jobs.tasks.jobs_prune_task"][0] == 0
    assert done["jobs.tasks.jobs_prune_task"][1] != threading.current_thread().name
    assert "celery-worker" not in {t.name for t in threading.enumerate() if t.is_alive()} - before
