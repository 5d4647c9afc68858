"""Relaunch from the job page (jobs/views/relaunch.py): a finished job launched from the dashboard
runs again with the same spec under a new NVFlare job id (operators only, audited); a job the FL
server submitted (its credentials were never stored) is not offered, and the page says why."""

from __future__ import annotations

import pytest
from django.urls import reverse

from jobs.models import AuditEntry, Job, JobEvent
from jobs.services.lifecycle import job_observe, verdict
from jobs.services.submission import job_submit
from jobs.services.tokens import token_create
from jobs.views.relaunch import FROM_FL_SERVER

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def launched_from_the_form(client, users, django_capture_on_commit_callbacks, *, finish: bool = True) -> Job:
    client.force_login(users["operator"])
    with django_capture_on_commit_callbacks(execute=False):  # no launch: only what was recorded matters
        client.post(reverse("job-launch", args=["site-1"]), {
            "site": "site-1", "job_id": "first-run", "study": "cohort", "image": "",
            "exe_module": "fake_nvflare_job", "set_options": "sleep=1 exit=0", "options": ""})
    job = Job.objects.get(job_id="first-run")
    if finish:
        job, _ = job_observe(job.pk, verdict("failed", return_code=1), source="watcher")
    return job


def test_an_operator_relaunches_a_finished_dashboard_job_with_a_new_id(
        client, users, process_site, study, django_capture_on_commit_callbacks):
    old = launched_from_the_form(client, users, django_capture_on_commit_callbacks)
    page = client.get(reverse("job-detail", args=[old.pk])).content.decode()
    assert 'id="relaunch"' in page and "Relaunch not offered" not in page
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("job-relaunch", args=[old.pk]))
    new = Job.objects.exclude(pk=old.pk).get()
    assert response.status_code == 302 and response["Location"] == reverse("job-detail", args=[new.pk])
    assert new.job_id != old.job_id and len(new.job_id) == 36
    assert (new.study, new.role, new.set_options, new.submitted_by) == (old.study, old.role, old.set_options,
                                                                       users["operator"])
    assert new.job_args["job_id"] == ["-n", new.job_id]
    assert {k: v for k, v in new.job_args.items() if k != "job_id"} == \
        {k: v for k, v in old.job_args.items() if k != "job_id"}
    assert new.job_meta == {**old.job_meta, "job_id": new.job_id, "name": new.job_id}
    assert len(callbacks) == 2  # publish + the launch task
    entry = AuditEntry.objects.get(action="job.relaunch")
    assert entry.target == f"job:{new.pk}" and entry.detail["relaunch_of"] == "first-run"
    assert entry.user == users["operator"] and entry.site == process_site
    assert JobEvent.objects.filter(job=new, message__contains="relaunch of first-run").exists()


def test_viewers_may_not_relaunch_and_see_no_button(client, users, process_site, study,
                                                   django_capture_on_commit_callbacks):
    old = launched_from_the_form(client, users, django_capture_on_commit_callbacks)
    client.force_login(users["viewer"])
    assert 'id="relaunch"' not in client.get(reverse("job-detail", args=[old.pk])).content.decode()
    assert client.post(reverse("job-relaunch", args=[old.pk])).status_code == 403
    assert client.get(reverse("job-relaunch", args=[old.pk])).status_code == 405
    assert Job.objects.count() == 1 and not AuditEntry.objects.filter(action="job.relaunch").exists()


def test_a_running_job_is_not_relaunched(client, users, process_site, study, django_capture_on_commit_callbacks):
    old = launched_from_the_form(client, users, django_capture_on_commit_callbacks, finish=False)
    assert 'id="relaunch"' not in client.get(reverse("job-detail", args=[old.pk])).content.decode()
    response = client.post(reverse("job-relaunch", args=[old.pk]), follow=True)
    assert "has not finished" in response.content.decode() and Job.objects.count() == 1


def test_a_job_from_the_fl_server_is_not_offered_and_says_why(client, users, process_site, job_args,
                                                             django_capture_on_commit_callbacks):
    token, _ = token_create(site=process_site, name="fl-server")
    with django_capture_on_commit_callbacks(execute=False):
        job, _ = job_submit(site=process_site, job_id="from-server", job_meta={}, job_args=job_args("from-server"),
                            submitted_by_token=token)
    job, _ = job_observe(job.pk, verdict("succeeded", return_code=0), source="watcher")
    client.force_login(users["operator"])
    page = client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert 'id="relaunch"' not in page and 'id="relaunch-refusal"' in page
    assert "credentials (auth token, signature) were never stored" in page
    response = client.post(reverse("job-relaunch", args=[job.pk]), follow=True)
    assert FROM_FL_SERVER.split(":")[0] in response.content.decode() and Job.objects.count() == 1
    assert not AuditEntry.objects.filter(action="job.relaunch").exists()
