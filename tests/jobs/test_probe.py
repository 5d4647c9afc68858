"""The site probe ("test launch"): an ordinary submit with the launcher's declared command override,
launched by the launch task like any job, its report read from the saved logs tail on its job page."""

from __future__ import annotations

import os
import uuid

import pytest
from django.urls import reverse

from backends.base import BackendError

from jobs.models import AuditEntry, Job, JobEvent, Role, Site, SiteMembership
from jobs.services import catalog
from jobs.services.launching import job_launch
from jobs.services.probe import PYTHON_PROBE, SHELL_PROBE, probe_report, site_probe
from jobs.services.reconciliation import site_reconcile
from tests.util import docker_client_or_skip, wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def launch_to_end(job, *, timeout: float = 30):
    """What the launch task does (no credentials: the probe has none), then the watcher's part
    (reconcile) until the job has ended and its output is saved."""
    job_launch(job_pk=job.pk, credentials={})

    def ended():
        job.refresh_from_db()
        if not job.is_terminal:  # once ended, the finisher saves the tail and removes the workload
            try:
                site_reconcile(site=job.site)
            except BackendError:  # the engine busy or unreachable for a moment: look again
                pass
            job.refresh_from_db()
        return job.is_terminal and job.logs_tail

    wait_until(ended, timeout=timeout, interval=0.2, message=f"{job.job_id} to end with its output saved")
    return job


def test_probe_lists_the_datasets_a_process_job_sees(users, process_site, study, data_root):
    job = launch_to_end(site_probe(site=process_site, study="cohort", requested_by=users["owner"]))
    result = probe_report(job)
    assert result.job.job_id.startswith("probe-") and result.job.state == "succeeded", result.output
    assert [(m.path, m.dataset, m.expected) for m in result.mounts] == [(str(data_root / "cohort-a"), "train", "ro")]
    assert result.ok and not result.missing and not result.modes_enforced
    assert Job.objects.filter(site=process_site, job_id__startswith="probe-").count() == 1
    # The declared override ran, with the site's python as argv[0]; NVFlare's command did not.
    assert job.spec["command"][1:] == ["-c", PYTHON_PROBE] and job.spec["command"][0] == job.request["command"][0]


def test_probe_is_submitted_and_launched_after_commit_not_in_the_request(
        users, process_site, study, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        job = site_probe(site=process_site, study="cohort", requested_by=users["owner"])
    assert len(callbacks) == 3  # publish the new row, enqueue the launch, the probe's time limit
    job.refresh_from_db()
    assert job.state == "queued" and job.handle is None and job.submitted_by == users["owner"]
    assert job.request["command"][1:] == ["-c", PYTHON_PROBE] and job.request["study"] == "cohort"
    first = JobEvent.objects.get(job=job)
    assert (first.to_state, first.source, first.message) == ("queued", "admin", "test launch from the site settings page")
    assert probe_report(job) is not None and not probe_report(job).done


def test_an_ordinary_job_has_no_probe_report(process_site, job_args):
    from jobs.services.submission import job_submit

    job, _ = job_submit(site=process_site, job_id="plain", job_meta={}, job_args=job_args("plain"))
    assert job.request["command"] is None and probe_report(job) is None


def test_settings_page_submits_the_probe_and_its_job_page_shows_what_it_saw(client, users, process_site, study, data_root):
    client.force_login(users["owner"])
    response = client.post(reverse("site-probe", args=[process_site.name]), {"study": "cohort"})
    job = Job.objects.get(site=process_site, job_id__startswith="probe-")
    assert response.status_code == 302 and response["Location"] == reverse("job-detail", args=[job.pk])
    entry = AuditEntry.objects.get(action="site.probe")
    assert entry.detail["job"] == job.pk and entry.detail["study"] == "cohort"
    page = client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert 'id="probe-result" data-done="false"' in page and "js/probe.js" in page

    launch_to_end(job)
    page = client.get(reverse("job-detail", args=[job.pk])).content.decode()
    assert 'id="probe-result" data-done="true"' in page and "all datasets as configured" in page
    assert str(data_root / "cohort-a") in page.split('id="probe-mounts"')[1]


def test_a_probe_the_site_cannot_launch_is_a_form_error_and_records_nothing(client, users, db, tmp_path):
    site = Site.objects.create(name="site-d", backend="docker", docker={"workspace": str(tmp_path)})
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    catalog.study_create(site=site, name="noimage")
    client.force_login(users["owner"])
    response = client.post(reverse("site-probe", args=["site-d"]), {"study": "noimage"})
    assert response.status_code == 200 and "image" in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)  # the finisher saves the tail on its own thread and connection
def test_docker_probe_shows_each_mount_and_its_mode(users, tmp_path):
    client = docker_client_or_skip()
    ws, data = tmp_path / "ws", tmp_path / "data"
    for path in (ws / "startup", ws / "local", data / "scans", data / "out"):
        path.mkdir(parents=True)
    for path in (ws, ws / "startup", ws / "local", data / "out"):
        os.chown(path, 1000, 1000)
    name = f"probe-{uuid.uuid4().hex[:8]}"
    site = catalog.site_create(name=name, backend="docker", allowed_data_roots=[str(data)],
                               docker={"workspace": str(ws), "user": "1000:1000"})
    imaging = catalog.study_create(site=site, name="imaging", image="launcher-test/fake-python:1")
    catalog.dataset_create(study=imaging, name="scans", source=str(data / "scans"), mode="ro")
    catalog.dataset_create(study=imaging, name="out", source=str(data / "out"), mode="rw")
    try:
        job = launch_to_end(site_probe(site=site, study="imaging", requested_by=users["owner"]), timeout=60)
        result = probe_report(job)
        assert job.state == "succeeded", result.output
        assert sorted((m.path, m.mode, m.expected) for m in result.mounts) == [
            ("/data/imaging/out", "rw", "rw"), ("/data/imaging/scans", "ro", "ro")]
        assert result.ok and result.modes_enforced and job.spec["command"] == ["sh", "-c", SHELL_PROBE]
    finally:
        import docker

        for container in client.containers.list(all=True, filters={"label": f"flare-launcher/site={name}"}):
            try:
                container.remove(force=True)
            except docker.errors.APIError:  # already being removed by the launcher's finisher
                pass
        client.close()
