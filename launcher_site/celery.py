"""The Celery app. Broker: REDIS_URL, else the in-memory transport served by the embedded worker."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "launcher_site.settings")

app = Celery("launcher_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def schedule_reconcile(sender, **kwargs):
    from django.conf import settings

    sender.add_periodic_task(settings.LAUNCHER_RECONCILE_SECONDS, sender.tasks["jobs.tasks.sites_reconcile_task"],
                             name="reconcile every site")
