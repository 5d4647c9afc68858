"""job_submit + job_launch on the process backend, with real subprocesses."""

import json

import pytest
from django.core import serializers

from backends.base import InvalidJobSpec
from jobs.models import Job, JobEvent
from jobs.services.launching import job_launch, job_terminate
from jobs.services.reconciliation import site_reconcile
from jobs.services.submission import job_submit
from tests.util import wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def submit(site, job_id, args, **kwargs):
    return job_submit(site=site, job_id=job_id, job_meta={}, job_args=args, **kwargs)


def run_to_end(job, credentials):
    """What the launch task does, then the watcher's part (reconcile) until the job ends."""
    job_launch(job_pk=job.pk, credentials=credentials)

    def ended():
        site_reconcile(site=job.site)
        job.refresh_from_db()
        return job.is_terminal

    wait_until(ended, timeout=15, interval=0.1, message=f"{job.job_id} to end")
    return job


def credentials_of(args):
    return {k: args[k] for k in ("auth_token", "auth_signature", "ssid")}


def test_submitted_job_runs_to_success_and_credentials_stay_out_of_the_record(
        process_site, job_args, workspace, django_capture_on_commit_callbacks):
    args = job_args("job-a")
    with django_capture_on_commit_callbacks() as callbacks:
        job, created = submit(process_site, "job-a", args)
    assert created and job.state == "queued"
    assert len(callbacks) == 2  # publish the new row, enqueue the launch
    job = run_to_end(job, credentials_of(args))

    assert job.state == "succeeded" and job.return_code == 0
    assert "fake job done" in job.logs_tail
    assert job.handle["backend"] == "process" and job.spec["command"][3] == "fake_nvflare_job"
    record = json.loads((workspace / "job-a" / "job_record.json").read_text())
    assert record["env"]["NVFLARE_JOB_AUTH_TOKEN"] == "tok-SECRET-123"
    assert not any("SECRET" in a for a in record["argv"])
    stored = serializers.serialize("json", [job, *JobEvent.objects.filter(job=job)])
    assert "SECRET" not in stored
    assert [e.to_state for e in JobEvent.objects.filter(job=job)] == ["queued", "starting", "running", "succeeded"] \
        or [e.to_state for e in JobEvent.objects.filter(job=job)] == ["queued", "starting", "succeeded"]


def test_non_zero_exit_ends_failed(process_site, job_args):
    args = job_args("job-b")
    job, _ = submit(process_site, "job-b", args, set_options=["exit=4"])
    job = run_to_end(job, credentials_of(args))
    assert job.state == "failed" and job.return_code == 1 and job.exit_code == 4


def test_terminate_running_job(process_site, job_args):
    args = job_args("job-c")
    job, _ = submit(process_site, "job-c", args, set_options=["sleep=60"])
    job_launch(job_pk=job.pk, credentials=credentials_of(args))
    job = job_terminate(job_pk=job.pk)
    assert job.state == "aborted" and job.return_code == 9
    assert job_terminate(job_pk=job.pk).state == "aborted"  # idempotent


def test_same_job_id_again_returns_the_existing_job_and_enqueues_nothing_once_launched(
        process_site, job_args, django_capture_on_commit_callbacks):
    args = job_args("job-d")
    first, created = submit(process_site, "job-d", args)
    job_launch(job_pk=first.pk, credentials=credentials_of(args))
    with django_capture_on_commit_callbacks() as callbacks:
        again, created_again = submit(process_site, "job-d", args)
    assert created and not created_again and again.pk == first.pk
    assert callbacks == []
    assert Job.objects.filter(job_id="job-d").count() == 1


def test_same_job_id_again_while_still_queued_queues_its_launch_again_only_after_the_grace(
        process_site, job_args, django_capture_on_commit_callbacks, settings):
    # The web process that took the first submit may have died between its commit and its enqueue;
    # the client's retry is the only chance to launch it (the credentials are never stored). A
    # second launch task is harmless (the launch is idempotent), but a burst of identical submits
    # within the grace period queues nothing extra.
    from datetime import timedelta

    from django.utils import timezone

    first, _ = submit(process_site, "job-q", job_args("job-q"))
    with django_capture_on_commit_callbacks() as callbacks:
        submit(process_site, "job-q", job_args("job-q"))
    assert callbacks == []
    Job.objects.filter(pk=first.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.LAUNCHER_RELAUNCH_AFTER_SECONDS + 1))
    with django_capture_on_commit_callbacks() as callbacks:
        again, created_again = submit(process_site, "job-q", job_args("job-q"))
    assert not created_again and again.pk == first.pk
    assert len(callbacks) == 2  # enqueue the launch, and push the note that says so (no new row)
    assert Job.objects.filter(job_id="job-q").count() == 1
    assert "launching it again" in again.detail and again.reason == "Relaunched"


def test_a_resubmit_that_no_longer_validates_still_returns_the_existing_job(process_site, job_args):
    # New jobs are inserted first and the unique constraint decides; a resubmit is answered with
    # the job on record even when it would not pass today's checks (the site's settings changed).
    first, _ = submit(process_site, "job-r", job_args("job-r"))
    args = job_args("job-r")
    args.pop("exe_module")
    again, created = submit(process_site, "job-r", args)
    assert not created and again.pk == first.pk
    with pytest.raises(InvalidJobSpec):
        submit(process_site, "job-other", args)  # a new job id is still checked


@pytest.mark.parametrize("change, field", [
    (lambda a: a.pop("exe_module"), "job_args.exe_module"),
    (lambda a: a.update(bogus=["-x", "1"]), "job_args.bogus"),
])
def test_bad_input_names_the_field_and_stores_nothing(process_site, job_args, change, field):
    args = job_args("job-e")
    change(args)
    with pytest.raises(InvalidJobSpec) as info:
        submit(process_site, "job-e", args)
    assert info.value.field == field
    assert not Job.objects.exists()


def test_bad_study_name_and_job_id_are_refused(process_site, job_args):
    with pytest.raises(InvalidJobSpec) as info:
        job_submit(site=process_site, job_id="job-f", job_meta={"study": "Bad Study"}, job_args=job_args("job-f"))
    assert info.value.field == "job_meta.study"
    with pytest.raises(InvalidJobSpec) as info:
        submit(process_site, "../x", job_args("../x"))
    assert info.value.field == "job_id"
    assert not Job.objects.exists()


def test_reconcile_marks_vanished_workload_lost(process_site, job_args):
    from backends.base import Handle
    from jobs.services.sites import site_backend

    args = job_args("job-g")
    job, _ = submit(process_site, "job-g", args, set_options=["sleep=60"])
    job_launch(job_pk=job.pk, credentials=credentials_of(args))
    job.refresh_from_db()
    backend = site_backend(process_site)
    backend.terminate(Handle(**job.handle))  # behind the dashboard's back...
    backend.cleanup(Handle(**job.handle))  # ...and removed by hand
    site_reconcile(site=process_site)
    job.refresh_from_db()
    assert job.state == "lost" and job.reason == "vanished"


def test_broker_down_after_commit_marks_launch_failed_instead_of_hanging(process_site, job_args):
    """With Redis gone the API still answers: the job is recorded and its failure explained."""
    from jobs.services.submission import _send_launch
    from launcher_site.celery import app

    job, _ = submit(process_site, "job-h", job_args("job-h"))
    saved = app.conf.broker_url, app.conf.task_publish_retry
    def fresh_pool():  # Celery builds its pools once from broker_url; rebuild them around the swap
        app.pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None

    app.conf.broker_url, app.conf.task_publish_retry = "redis://127.0.0.1:1/0", False
    fresh_pool()
    try:
        _send_launch(job.pk, {})
    finally:
        app.conf.broker_url, app.conf.task_publish_retry = saved
        fresh_pool()
    job.refresh_from_db()
    assert job.state == "launch_failed" and job.reason == "BrokerUnavailable"


@pytest.mark.parametrize("first, second", [("coll-1", "COLL-1"), ("Run.A", "run.a")])
def test_a_job_id_that_maps_to_another_jobs_workload_name_is_refused_before_launch(
        process_site, job_args, first, second, django_capture_on_commit_callbacks):
    """Workload names are case-folded: `COLL-1` after `coll-1` would adopt the first job's process
    (terminating one aborted the other). Refused at submit, nothing recorded or queued."""
    with django_capture_on_commit_callbacks() as callbacks:
        job, created = submit(process_site, first, job_args(first))
    assert created and job.workload == "site-1-" + first.lower()
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(InvalidJobSpec) as info:
            submit(process_site, second, job_args(second))
    assert info.value.field == "job_id"
    assert first in info.value.reason and "case" in info.value.reason
    assert list(Job.objects.values_list("job_id", flat=True)) == [first]
    assert callbacks == []  # no launch queued for the second id
