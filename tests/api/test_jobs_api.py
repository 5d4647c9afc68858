"""POST/GET /api/v1/jobs/...: launch, idempotency, bad input, listing, events, logs, terminate."""

from __future__ import annotations

import json

import pytest

from backends.base import JobState
from jobs.models import AuditEntry, Job, JobEvent
from jobs.services.lifecycle import job_observe, verdict
from tests.api.conftest import launch_body

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_site_token_launches_a_job_and_the_same_job_again_returns_it(process_site, site_token, job_args):
    client = site_token(process_site)
    body = launch_body("job-1", job_args("job-1"), set_options=["sleep=0"])
    first = client.post("/api/v1/jobs/", body, format="json")
    assert first.status_code == 201, first.json()
    job = first.json()
    assert job["site"] == "site-1" and job["job_id"] == "job-1" and job["state"] == "queued"
    assert job["url"] == f"/api/v1/jobs/{job['id']}/"
    again = client.post("/api/v1/jobs/", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert Job.objects.count() == 1
    # Credentials never come back, nor are they stored.
    detail = client.get(f"/api/v1/jobs/{job['id']}/")
    assert detail.status_code == 200 and "SECRET" not in detail.content.decode()
    assert detail.json()["job_args"]["auth_token"] == ["-t", "***"]
    assert "SECRET" not in json.dumps(list(Job.objects.values())[0], default=str)
    entry = AuditEntry.objects.get(action="job.launch")
    assert entry.target == f"job:{job['id']}" and entry.token is not None and entry.user is None
    assert entry.actor.startswith("site:site-1 (token flr_") and entry.remote_addr == "127.0.0.1"


@pytest.mark.parametrize("change, field", [
    (lambda b: b["job_args"].pop("exe_module"), "job_args.exe_module"),
    (lambda b: b["job_args"].update(bogus=["-x", "1"]), "job_args.bogus"),
    (lambda b: b["job_meta"].update(evil=True), "job_meta"),
    (lambda b: b["job_meta"].update(study="Bad Study"), "job_meta.study"),
    (lambda b: b.update(job_id="../x"), "job_id"),
    (lambda b: b.update(job_id=12), "job_id"),
    (lambda b: b.update(role="worker"), "role"),
    (lambda b: b.update(job_meta=["not", "a", "dict"]), "job_meta"),
    (lambda b: b.update(job_args="nope"), "job_args"),
    (lambda b: b.update(set_options="exit=1"), "set_options"),
    (lambda b: b.update(unexpected=1), "unexpected"),
    (lambda b: b.update(site=None), "site"),
    (lambda b: b.update(site="no-such-site"), "site"),
])
def test_bad_launch_input_is_a_400_naming_the_field_and_stores_nothing(process_site, as_user, job_args, change, field):
    body = launch_body("job-2", job_args("job-2"))
    change(body)
    response = as_user("operator").post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Job.objects.exists() and not AuditEntry.objects.exists()


def test_byoc_in_job_meta_is_accepted_and_dropped(process_site, as_user, job_args):
    body = launch_body("job-3", job_args("job-3"))
    body["job_meta"].update(byoc=True, name="hello", submitter_name="alice@example.org")
    response = as_user("operator").post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    assert "byoc" not in Job.objects.get().job_meta


def test_malformed_json_wrong_types_and_huge_bodies_are_4xx_json(process_site, as_user, settings):
    client = as_user("operator")
    bad = client.post("/api/v1/jobs/", "{not json", content_type="application/json")
    assert bad.status_code == 400 and "detail" in bad.json()
    nan = client.post("/api/v1/jobs/", '{"site": NaN}', content_type="application/json")
    assert nan.status_code == 400 and "detail" in nan.json()
    listed = client.post("/api/v1/jobs/", [1, 2], format="json")
    assert listed.status_code == 400 and listed.json()
    huge = client.post("/api/v1/jobs/", "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1), content_type="application/json")
    assert huge.status_code == 413 and huge.json()["detail"].startswith("Request body is")
    form = client.post("/api/v1/jobs/", "a=b", content_type="text/plain")
    assert form.status_code == 415 and "detail" in form.json()
    assert not Job.objects.exists()


def submitted(site, job_id, args, client):
    response = client.post("/api/v1/jobs/", launch_body(job_id, args(job_id)), format="json")
    assert response.status_code == 201, response.content
    return response.json()


def test_list_is_newest_first_filtered_and_cursor_paginated(process_site, as_user, job_args):
    client = as_user("operator")
    ids = [submitted(process_site, f"job-{i}", job_args, client)["id"] for i in range(5)]
    Job.objects.filter(pk=ids[0]).update(state="succeeded", study="s1")
    page = client.get("/api/v1/jobs/?page_size=2").json()
    assert [j["id"] for j in page["results"]] == ids[::-1][:2] and page["next"] and "count" not in page
    seen = [j["id"] for j in page["results"]]
    while page["next"]:
        page = client.get(page["next"]).json()
        seen += [j["id"] for j in page["results"]]
    assert seen == ids[::-1]
    assert [j["id"] for j in client.get("/api/v1/jobs/?state=succeeded").json()["results"]] == [ids[0]]
    assert [j["id"] for j in client.get("/api/v1/jobs/?study=s1").json()["results"]] == [ids[0]]
    assert [j["id"] for j in client.get("/api/v1/jobs/?job_id=job-3").json()["results"]] == [ids[3]]
    assert len(client.get("/api/v1/jobs/?site=site-1").json()["results"]) == 5
    assert client.get("/api/v1/jobs/?site=site-2").json()["results"] == []
    bad = client.get("/api/v1/jobs/?state=sleeping")
    assert bad.status_code == 400 and "state" in bad.json()


def test_events_carry_seq_and_resume_after_a_seq(process_site, as_user, job_args):
    client = as_user("viewer")
    job = submitted(process_site, "job-e", job_args, as_user("operator"))
    job_observe(job["id"], verdict(JobState.STARTING, message="created"), source="worker")
    job_observe(job["id"], verdict(JobState.RUNNING), source="watcher")
    events = client.get(f"/api/v1/jobs/{job['id']}/events/").json()["results"]
    assert [e["to_state"] for e in events] == ["queued", "starting", "running"]
    assert [e["seq"] for e in events] == list(JobEvent.objects.filter(job_id=job["id"]).values_list("id", flat=True))
    later = client.get(f"/api/v1/jobs/{job['id']}/events/?after={events[0]['seq']}").json()["results"]
    assert [e["to_state"] for e in later] == ["starting", "running"]
    assert client.get(f"/api/v1/jobs/{job['id']}/events/?after=x").status_code == 400


def test_logs_of_a_finished_job_are_its_saved_tail(process_site, as_user, job_args):
    client = as_user("viewer")
    job = submitted(process_site, "job-l", job_args, as_user("operator"))
    assert client.get(f"/api/v1/jobs/{job['id']}/logs/").json()["source"] == "none"
    job_observe(job["id"], verdict(JobState.FAILED, logs_tail="one\ntwo\nthree", exit_code=3), source="watcher")
    logs = client.get(f"/api/v1/jobs/{job['id']}/logs/?tail=2").json()
    assert logs == {"job": job["id"], "source": "saved", "tail": 2, "logs": "two\nthree"}
    assert client.get(f"/api/v1/jobs/{job['id']}/logs/?tail=0").status_code == 400
    assert client.get(f"/api/v1/jobs/{job['id']}/logs/?tail=many").status_code == 400


def test_terminate_is_202_and_idempotent_and_audited_once(process_site, as_user, job_args):
    client = as_user("operator")
    job = submitted(process_site, "job-t", job_args, client)
    first = client.post(f"/api/v1/jobs/{job['id']}/terminate/")
    assert first.status_code == 202 and first.json()["state"] == "aborted"  # never launched: aborted at once
    second = client.post(f"/api/v1/jobs/{job['id']}/terminate/")
    assert second.status_code == 202 and second.json()["state"] == "aborted"
    assert AuditEntry.objects.filter(action="job.terminate").count() == 1
    entry = AuditEntry.objects.get(action="job.terminate")
    assert entry.user.username == "operator" and entry.token is None and entry.actor == "operator"


@pytest.mark.django_db(transaction=True)  # the long poll reads on the shared thread pool: rows must be committed
def test_wait_timeout_is_validated(process_site, as_user, job_args):
    client = as_user("viewer")
    job = submitted(process_site, "job-w", job_args, as_user("operator"))
    for bad in ("61", "-1", "nan", "soon"):
        response = client.get(f"/api/v1/jobs/{job['id']}/wait/?timeout={bad}")
        assert response.status_code == 400 and "timeout" in response.json()
    assert client.get(f"/api/v1/jobs/{job['id']}/wait/?timeout=0").json()["state"] == "queued"


def test_a_site_token_never_reads_the_site_configuration_through_a_jobs_spec(process_site, site_token, as_user, job_args):
    """The spec as launched carries study env values and host paths: site configuration, which a
    site token may not read. Site members still see it."""
    job = site_token(process_site).post("/api/v1/jobs/", launch_body("job-spec", job_args("job-spec")),
                                         format="json").json()
    Job.objects.filter(pk=job["id"]).update(spec={"env": {"STUDY_DB_PASSWORD": "study-SECRET-value"},
                                                  "workdir": "/srv/nvflare/site-1/job-spec"})
    as_token = site_token(process_site).get(f"/api/v1/jobs/{job['id']}/")
    assert as_token.status_code == 200 and "spec" not in as_token.json()
    assert "study-SECRET-value" not in as_token.content.decode()
    as_viewer = as_user("viewer").get(f"/api/v1/jobs/{job['id']}/")
    assert as_viewer.json()["spec"]["env"]["STUDY_DB_PASSWORD"] == "study-SECRET-value"
