"""One job payload (jobs.payloads): the API, the pushes, the long poll and resume all send
job_payload(job), and it is what the schema declares (the API serializers' fields, as DRF would
represent them)."""

from __future__ import annotations

import ast
import datetime
import pathlib

import pytest
from django.urls import set_script_prefix
from django.utils import timezone
from rest_framework import serializers

from backends.base import JobState
from jobs import events, payloads
from jobs.api.serializers import (
    JobDetailSerializer,
    JobSerializer,
    JobSubmitterDetailSerializer,
)
from jobs.models import Job, Site
from jobs.services import resume

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]
ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def jobs():
    site = Site.objects.create(name="site-1")
    fresh = Job.objects.create(site=site, job_id="fresh", backend="process")
    done = Job.objects.create(
        site=site, job_id="done", backend="docker", role="server", study="cohort-a", image="img:1",
        handle={"name": "c1", "id": "abc"}, state="failed", return_code=1, exit_code=137, reason="OOMKilled",
        detail="container exited with code 137", job_meta={"job_id": "done", "study": "cohort-a"},
        job_args={"exe_module": ["-m", "x.y"]}, set_options=["a=b"], spec={"image": "img:1"},
        started_at=datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC),
        finished_at=datetime.datetime(2026, 1, 2, 4, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))))
    return list(Job.objects.select_related("site").filter(pk__in=[fresh.pk, done.pk]).order_by("pk"))


def drf(serializer_class, job) -> dict:
    """What DRF's own ModelSerializer would answer for the fields the serializer declares."""
    return dict(serializers.ModelSerializer.to_representation(serializer_class(), job))


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_the_payload_is_what_the_schema_declares_as_drf_would_show_it(jobs, zone, settings):
    settings.TIME_ZONE = zone
    for job in jobs:
        assert payloads.job_payload(job) == drf(JobSerializer, job)
        assert list(payloads.job_payload(job)) == list(payloads.JOB_FIELDS)
        assert payloads.job_detail_payload(job) == drf(JobDetailSerializer, job)
        assert payloads.job_detail_payload(job, spec=False) == drf(JobSubmitterDetailSerializer, job)
        # The serializers answer with the payload (the API's list, detail and launch answers).
        assert JobSerializer(job).data == payloads.job_payload(job)
        assert JobDetailSerializer(job).data == payloads.job_detail_payload(job)
        assert "spec" not in JobSubmitterDetailSerializer(job).data
    started = payloads.job_payload(jobs[1])["started_at"]
    assert started == ("2026-01-02T03:04:05.678901Z" if zone == "UTC" else "2026-01-02T04:04:05.678901+01:00")
    assert payloads.job_payload(jobs[0])["finished_at"] is None


def test_the_payload_does_not_depend_on_the_request(jobs):
    """Pushes are built by workers and watchers, answers by requests: the same payload either way."""
    before = payloads.job_payload(jobs[1])
    with timezone.override("Asia/Tokyo"):
        assert payloads.job_payload(jobs[1]) == before


def test_the_payload_is_plain_data(jobs):
    job = jobs[0]
    job.state, job.role = JobState.RUNNING, "client"  # an enum member assigned in memory is sent as its value
    payload = payloads.job_payload(job)
    assert type(payload) is dict and type(payload["state"]) is str and payload["state"] == "running"
    assert payloads.loads(payloads.dumps(payload)) == payload


def test_the_url_is_reversed_from_the_router_and_needs_no_request(jobs):
    job = jobs[0]
    assert payloads.job_url(job.pk) == f"/api/v1/jobs/{job.pk}/"
    set_script_prefix("/behind/a/proxy/")  # a request's prefix does not change what every process sends
    try:
        assert payloads.job_payload(job)["url"] == f"/api/v1/jobs/{job.pk}/"
    finally:
        set_script_prefix("/")


def test_a_push_carries_the_payload_encoded_once(jobs):
    job = jobs[1]
    message = payloads.job_broadcast(job, 42)
    assert (message["type"], message["id"], message["state"], message["seq"]) == ("job.update", job.pk, "failed", 42)
    assert payloads.broadcast_frame(message) == payloads.job_frame(job, 42) == {
        "type": "job.update", "job": payloads.job_payload(job), "seq": 42}
    both = payloads.loads(payloads.updates_text([message["text"], message["text"]]))
    assert both == {"type": "job.updates", "updates": [payloads.job_frame(job, 42)] * 2}


def test_resume_sends_the_same_payload(jobs):
    site = jobs[0].site
    snapshot = resume.site_jobs_resume(site=site, seq=None).snapshot
    assert snapshot["jobs"] == [payloads.job_payload(job) for job in sorted(jobs, key=lambda j: -j.pk)]


def test_the_payload_lives_outside_the_api_layer():
    """Events, resume, the consumers and the payload itself never import jobs.api (no cycle)."""
    for path in [ROOT / "jobs/payloads.py", ROOT / "jobs/events.py", ROOT / "jobs/consumers.py",
                 *sorted((ROOT / "jobs/services").glob("*.py"))]:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(name == "jobs.api" or name.startswith("jobs.api.") for name in names), path
    assert events.job_broadcast is payloads.job_broadcast
