"""20 identical launches at once: exactly one job row, one queued event, one launch enqueued; the
other 19 callers get that same job back (200)."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connections
from rest_framework.test import APIClient

from jobs.models import Job, JobEvent
from jobs.services.tokens import token_create
from tests.api.conftest import launch_body

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]


def launch_messages(job_pk: int, *, remove: bool) -> list[str]:
    """The bodies of launch tasks for `job_pk` waiting in the Redis broker, as a reader of the
    queue sees them."""
    import redis

    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    found = []
    for raw in client.lrange("celery", 0, -1):
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != "jobs.tasks.job_launch_task":
            continue
        body = base64.b64decode(message["body"]).decode()
        if json.loads(body)[0][0] == job_pk:
            found.append(body)
            if remove:  # leave nothing behind in the shared broker
                client.lrem("celery", 1, raw)
    return found


def test_twenty_concurrent_identical_launches_make_one_job(process_site, job_args):
    _, secret = token_create(site=process_site)
    marker = "tok-SECRET-concurrent-0001"
    body = launch_body("job-c", job_args("job-c", token=marker))

    def post(_):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        try:
            response = client.post("/api/v1/jobs/", body, format="json")
            return response.status_code, response.json()["id"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(post, range(20)))

    codes = sorted(code for code, _ in results)
    assert codes == [200] * 19 + [201], codes
    assert len({pk for _, pk in results}) == 1
    job = Job.objects.get()
    assert JobEvent.objects.filter(job=job, to_state="queued").count() == 1
    if settings.REDIS_URL:
        messages = launch_messages(job.pk, remove=True)
        assert len(messages) == 1
        # The credentials travel sealed: nothing of them is readable in the broker.
        assert marker not in messages[0] and "sig-SECRET-456" not in messages[0]
