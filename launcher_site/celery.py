"""The Celery app. Broker: REDIS_URL, else the in-memory transport served by the embedded worker."""

import os

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launcher_site.settings")

app = Celery("launcher_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def broker_redelivery(sender, **kwargs):
    # acks_late + a worker killed mid-task: Redis hands the unacknowledged task to another worker
    # after the visibility timeout. Kombu's default (1 h, swept every ~100 s) would leave a launch
    # hanging that long; sweep often enough that redelivery follows the timeout closely.
    from django.conf import settings

    visibility = settings.LAUNCHER_TASK_VISIBILITY_SECONDS
    sender.conf.broker_transport_options = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": max(1, min(10, visibility // 4)),
        "unacked_restore_throttle": 1,
        **(sender.conf.broker_transport_options or {}),
    }


def connections_back_to_pool(**kwargs):
    # With CELERY_DB_REUSE_MAX (settings) the fixup no longer closes connections around a task: give
    # the connection back to the pool (a broken one is dropped), as Django does after a request. Not
    # a connection inside its caller's transaction (a task applied in a test's): that is the caller's.
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


task_prerun.connect(connections_back_to_pool)
task_postrun.connect(connections_back_to_pool)


@worker_ready.connect
def warm_up(sender, **kwargs):
    # The first job payload resolves the URL configuration (~0.4 s): paid now, not on a worker's
    # first push after a launch.
    from jobs.payloads import job_url

    job_url(0)


@worker_ready.connect
def reconcile_on_start(sender, **kwargs):
    # Start-up reconcile: whatever ended while no worker was running is recorded now, not a beat later.
    sender.app.send_task("jobs.tasks.sites_reconcile_task")
