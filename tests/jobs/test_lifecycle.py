"""job_create, job_observe and job_note: the one door for jobs, their states and their events."""

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from jobs import events
from jobs.models import Job, JobEvent, Site
from backends.base import Observation
from jobs.services.lifecycle import job_note, job_observe, verdict

pytestmark = pytest.mark.embedded


@pytest.fixture
def job(db):
    site = Site.objects.create(name="site-1")
    return Job.objects.create(site=site, job_id="j1", backend="process")


def states(job):
    return list(JobEvent.objects.filter(job=job).values_list("from_state", "to_state", "source"))


def test_forward_changes_each_write_one_event(job, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        job_observe(job.pk, verdict("starting"), source="worker")
        job_observe(job.pk, verdict("running"), source="watcher")
        job_observe(job.pk, verdict("succeeded", return_code=0, exit_code=0), source="watcher")
    assert states(job) == [("queued", "starting", "worker"), ("starting", "running", "watcher"),
                           ("running", "succeeded", "watcher")]
    assert len(callbacks) == 3  # one publish per change, after commit
    job.refresh_from_db()
    assert job.state == "succeeded" and job.return_code == 0
    assert job.started_at and job.finished_at and job.started_at <= job.finished_at


def test_duplicate_and_backward_observations_change_nothing(job):
    job_observe(job.pk, verdict("running"), source="watcher")
    _, changed_dup = job_observe(job.pk, verdict("running"), source="watcher")
    _, changed_back = job_observe(job.pk, verdict("starting"), source="worker")
    assert not changed_dup and not changed_back
    assert states(job) == [("queued", "running", "watcher")]


def test_terminal_state_is_sticky(job):
    job_observe(job.pk, verdict("aborted"), source="api")
    _, changed = job_observe(job.pk, verdict("succeeded", return_code=0), source="watcher")
    job.refresh_from_db()
    assert not changed and job.state == "aborted" and job.return_code == 9


@pytest.mark.parametrize("state, code", [("failed", 1), ("lost", 9), ("launch_failed", 104), ("succeeded", 0)])
def test_terminal_states_get_nvflare_return_codes(job, state, code):
    job_observe(job.pk, verdict(state), source="reconcile")
    job.refresh_from_db()
    assert job.return_code == code


def test_notes_are_recorded_without_repeating(job):
    job_observe(job.pk, verdict("starting"), source="worker")
    for _ in range(3):
        job_note(job.pk, source="watcher", message="pulling image")
    notes = JobEvent.objects.filter(job=job, message="pulling image")
    assert notes.count() == 1
    job.refresh_from_db()
    assert job.state == "starting"


def test_handle_recorded_late_is_still_kept(job):
    job_observe(job.pk, verdict("running"), source="watcher")
    job_observe(job.pk, Observation(ref="x", state="starting"), source="worker")
    job.refresh_from_db()
    assert job.handle == {"backend": "process", "ref": "x"} and job.state == "running"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_change_is_published_to_job_and_site_groups_after_commit():
    site = await Site.objects.acreate(name="site-1")
    job = await Job.objects.acreate(site=site, job_id="j1", backend="process")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.site_group("site-1"), channel)
    job_channel = await layer.new_channel()
    await layer.group_add(events.job_group(job.pk), job_channel)
    await sync_to_async(job_observe)(job.pk, verdict("running"), source="watcher")
    for ch in (channel, job_channel):
        message = await asyncio.wait_for(layer.receive(ch), timeout=5)
        seq = (await JobEvent.objects.filter(job=job).alast()).pk
        assert (message["type"], message["id"], message["state"], message["seq"]) == ("job.update", job.pk, "running", seq)
        browser = json.loads(message["text"])  # what consumers send on, encoded once
        assert browser["type"] == "job.update" and browser["seq"] == seq
        assert browser["job"]["state"] == "running" and browser["job"]["job_id"] == "j1"


def test_exit_seen_after_a_terminate_request_counts_as_aborted(job):
    from django.utils import timezone

    job_observe(job.pk, verdict("running"), source="watcher")
    Job.objects.filter(pk=job.pk).update(terminate_requested_at=timezone.now())
    # The watcher sees the kill (137 -> failed/1) before the worker records its terminate result.
    job_observe(job.pk, verdict("failed", return_code=1, exit_code=137, message="container exited with code 137"),
                source="watcher")
    job.refresh_from_db()
    assert (job.state, job.return_code, job.exit_code) == ("aborted", 9, 137)
    assert job.detail == "terminated on request (container exited with code 137)"


def test_success_before_a_terminate_request_took_effect_is_kept(job):
    from django.utils import timezone

    Job.objects.filter(pk=job.pk).update(terminate_requested_at=timezone.now())
    job_observe(job.pk, verdict("succeeded", return_code=0), source="watcher")
    job.refresh_from_db()
    assert (job.state, job.return_code) == ("succeeded", 0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_logs_tail_saved_after_the_exit_is_trimmed_kept_once_and_announced(settings):
    settings.LAUNCHER_LOGS_TAIL_LINES = 3
    site = await Site.objects.acreate(name="site-1")
    job = await Job.objects.acreate(site=site, job_id="j1", backend="docker")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.job_group(job.pk), channel)
    await sync_to_async(job_observe)(job.pk, verdict("failed", exit_code=3), source="watcher")
    assert (await asyncio.wait_for(layer.receive(channel), timeout=5))["state"] == "failed"
    events_before = await JobEvent.objects.filter(job=job).acount()

    assert (await sync_to_async(job_note)(job.pk, source="watcher", logs_tail="a\nb\nc\nd\ne\n"))[1]
    assert not (await sync_to_async(job_note)(job.pk, source="watcher", logs_tail="later\n"))[1]  # the first stays
    await job.arefresh_from_db()
    assert (job.logs_tail, job.state) == ("c\nd\ne", "failed")
    assert await JobEvent.objects.filter(job=job).acount() == events_before  # not a state change
    message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    assert message == {"type": "job.log", "job": job.pk, "lines": [], "saved": True}


def test_job_create_records_the_row_its_first_event_and_notes_and_publishes_once(
        db, django_capture_on_commit_callbacks):
    from jobs.services.lifecycle import job_create

    site = Site.objects.create(name="site-1")
    with django_capture_on_commit_callbacks() as callbacks:
        job = job_create(site=site, job_id="c1", source="api", message="submitted", notes=["no study"],
                         backend="process", request={"job_id": "c1"})
    assert len(callbacks) == 1  # one publish, after commit
    assert states(job) == [("", "queued", "api"), ("queued", "queued", "api")]
    assert list(JobEvent.objects.filter(job=job).values_list("message", flat=True)) == ["submitted", "no study"]
    job.refresh_from_db()
    assert (job.state, job.request) == ("queued", {"job_id": "c1"})
    with pytest.raises(ValueError):
        job_create(site=site, job_id="c2", source="browser", message="x", backend="process")


def test_a_terminate_request_is_stamped_once_with_its_note(job):
    first, changed = job_note(job.pk, source="admin", message="termination requested", terminate_requested=True)
    again, changed_again = job_note(job.pk, source="admin", message="termination requested", terminate_requested=True)
    assert changed and not changed_again
    assert first.terminate_requested_at and again.terminate_requested_at == first.terminate_requested_at
    assert JobEvent.objects.filter(job=job, message="termination requested").count() == 1


def test_an_event_observation_is_a_note(job):
    _, changed = job_observe(job.pk, Observation(ref="x", state="running", kind="event", message="pulling"),
                             source="watcher")
    job.refresh_from_db()
    assert changed and job.state == "queued" and states(job) == [("queued", "queued", "watcher")]
