"""Channel-layer groups and the one place that publishes job changes to them."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def job_group(job_pk: int) -> str:
    return f"job.{job_pk}"


def site_group(site_name: str) -> str:
    # Group names allow only ASCII letters, digits, '-', '_' and '.', which site names already are.
    return f"site.{site_name}"


def publish_job(job_pk: int, *, seq: int | None = None) -> None:
    """Send the job's current REST payload to its job and site groups. Called after commit only
    (jobs.services.lifecycle). The layer is at-most-once: a failed send is logged, never raised,
    because the database is the record and browsers re-sync on reconnect."""
    from jobs.api.serializers import JobSerializer
    from jobs.models import Job

    job = Job.objects.select_related("site").filter(pk=job_pk).first()
    if job is None:
        return
    message = {"type": "job.update", "job": JobSerializer(job).data, "seq": seq}
    send(job_group(job.pk), message)
    send(site_group(job.site.name), message)


def publish_log_lines(job_pk: int, site_name: str, lines: list[str]) -> None:
    send(job_group(job_pk), {"type": "job.log", "job": job_pk, "lines": lines})


def send(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # Redis down: state is already committed; pushes resume when it returns
        log.warning("could not publish to %s", group, exc_info=True)
