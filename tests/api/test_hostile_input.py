"""Inputs that used to crash a request (500) or be stored broken, each now a 4xx in the API's error
shape with nothing stored (issue 14). tests/api/test_fuzz.py looks for more with schemathesis."""

from __future__ import annotations

import base64
import json
import time

import pytest
from django.test import Client
from django.urls import reverse

from jobs.models import AuditEntry, Job, JobEvent, Site, Study
from tests.api.conftest import launch_body

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def job(process_site):
    job = Job.objects.create(site=process_site, job_id="job-1", backend="process", state="succeeded", logs_tail="a\nb\n")
    JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api", message="submitted")
    return job


@pytest.mark.parametrize("method, path", [
    ("get", "/api/v1/jobs/null/"), ("get", "/api/v1/jobs/null/events/"), ("get", "/api/v1/jobs/null/logs/"),
    ("post", "/api/v1/jobs/null/terminate/"), ("get", "/api/v1/jobs/null/wait/?timeout=0"),
    ("get", "/api/v1/jobs/1.5/"), ("get", "/api/v1/jobs/-1/"), ("get", "/api/v1/jobs/99999999999999999999/"),
    ("get", "/api/v1/sites/site-1/studies/Not%20A%20Name/"), ("delete", "/api/v1/sites/%C2%84/"),
])
def test_a_path_the_api_does_not_have_is_a_json_404(as_user, process_site, method, path):
    response = getattr(as_user("staff"), method)(path)
    assert response.status_code == 404, response.content
    assert response.json() == {"detail": "Not found."}


def test_an_unknown_path_is_a_json_404_for_writes_too_even_without_a_csrf_token(users):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["staff"])
    for method in ("post", "patch", "delete", "put"):
        response = getattr(client, method)("/api/v1/sites/%C2%84/")
        assert response.status_code == 404 and response.json() == {"detail": "Not found."}, response.content
    waited = client.post("/api/v1/jobs/1/wait/")
    assert waited.status_code == 405 and waited.json()["detail"] == 'Method "POST" not allowed.'


@pytest.mark.parametrize("query, name", [
    ("after=%C2%B2", "after"), ("after=1.5", "after"), ("after=-1", "after"), ("after=", "after"),
    ("after=99999999999999999999", "after"), ("page_size=0", "page_size"), ("page_size=abc", "page_size"),
    ("page_size=100000", "page_size"),
])
def test_bad_event_query_parameters_are_400s_naming_them(as_user, job, query, name):
    response = as_user("viewer").get(f"/api/v1/jobs/{job.pk}/events/?{query}")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [name]


@pytest.mark.parametrize("query", ["tail=%C2%B2", "tail=0", "tail=1.0", "tail=", "tail=10001"])
def test_bad_logs_parameters_are_400s_naming_them(as_user, job, query):
    response = as_user("viewer").get(f"/api/v1/jobs/{job.pk}/logs/?{query}")
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["tail"]


@pytest.mark.django_db(transaction=True)  # the long poll reads on the shared thread pool: rows must be committed
def test_bad_wait_parameters_are_400s_naming_them(as_user, job):
    viewer = as_user("viewer")
    for query in ("timeout=%C2%B2", "timeout=nan", "timeout=inf", "timeout=1e3", "timeout=61", "timeout=-1",
                  "timeout="):
        response = viewer.get(f"/api/v1/jobs/{job.pk}/wait/?{query}")
        assert response.status_code == 400, (query, response.content)
        assert list(response.json()) == ["timeout"]
    assert viewer.get(f"/api/v1/jobs/{job.pk}/wait/?timeout=0.5").json()["state"] == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_long_poll_is_held_at_most_launcher_wait_hold_seconds(as_user, process_site, settings):
    settings.LAUNCHER_WAIT_HOLD_SECONDS = 1
    job = Job.objects.create(site=process_site, job_id="job-r", backend="process", state="running")
    started = time.monotonic()
    response = as_user("viewer").get(f"/api/v1/jobs/{job.pk}/wait/?timeout=60")
    assert response.status_code == 200 and response.json()["state"] == "running"
    assert time.monotonic() - started < 15


def test_good_query_parameters_still_work(as_user, job):
    viewer = as_user("viewer")
    assert [e["seq"] for e in viewer.get(f"/api/v1/jobs/{job.pk}/events/?after=0&page_size=1").json()["results"]]
    assert viewer.get(f"/api/v1/jobs/{job.pk}/logs/?tail=1").json()["logs"] == "b\n"
    assert viewer.get("/api/v1/jobs/?site=site-1&study=&state=succeeded").json()["results"][0]["id"] == job.pk


@pytest.mark.parametrize("query, name", [
    ("site=bad%20name", "site"), ("study=Bad", "study"), ("job_id=../x", "job_id"), ("state=nope", "state"),
    ("cursor=garbage", "cursor"), ("page_size=501", "page_size"),
])
def test_bad_job_list_filters_are_400s_naming_them(as_user, job, query, name):
    response = as_user("viewer").get(f"/api/v1/jobs/?{query}")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [name]


def test_a_forged_cursor_is_a_400_not_a_query_error(as_user, job):
    for position in ("abc", "1e5", "99999999999999999999"):
        forged = base64.b64encode(f"o=0&r=0&p={position}".encode()).decode()
        response = as_user("viewer").get(f"/api/v1/jobs/?cursor={forged}")
        assert response.status_code == 400 and list(response.json()) == ["cursor"], response.content


def test_json_nested_5000_deep_is_a_400_everywhere(as_user, process_site, job_args):
    staff = as_user("staff")
    body = launch_body("job-deep", job_args("job-deep"))
    deep = json.dumps(body)[:-1] + ', "set_options": ' + nested(5000) + "}"
    for method, path, text in [
        ("post", "/api/v1/jobs/", deep),
        ("patch", "/api/v1/sites/site-1/", '{"process": {"default_job_env": ' + nested(5000) + "}}"),
        ("put", "/api/v1/sites/site-1/study-data/", '{"s": ' + nested(5000) + "}"),
        ("put", "/api/v1/sites/site-1/study-runtime/", nested(5000)),
        ("post", "/api/v1/sites/site-1/studies/", '{"name": "s", "docker_kwargs": {"a": ' + nested(100) + "}}"),
    ]:
        response = getattr(staff, method)(path, text, content_type="application/json")
        assert response.status_code == 400, (path, response.content[:300])
        assert "nested deeper than 64 levels" in response.json()["detail"], response.json()
    assert not Job.objects.exists() and not Study.objects.exists() and not AuditEntry.objects.exists()


@pytest.mark.parametrize("raw, problem", [
    ("1e400", "number out of range"), ("-1e400", "number out of range"), ("1" + "0" * 30, "integer out of range"),
    ('"\\ud800"', "lone surrogate (U+D800)"), ('"a\\udfffb"', "lone surrogate (U+DFFF)"), ('"\\u0000"', "NUL"),
])
def test_values_no_field_can_hold_are_400s_naming_where_and_nothing_is_stored(as_user, process_site, job_args, raw,
                                                                                problem):
    body = json.dumps(launch_body("job-x", job_args("job-x")))[:-1] + f', "job_meta": {{"job_id": "job-x", "name": {raw}}}}}'
    response = as_user("operator").post("/api/v1/jobs/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert problem in response.json()["job_meta.name"][0], response.json()
    assert not Job.objects.exists()


def test_a_lone_surrogate_in_a_key_or_a_site_setting_is_refused(as_user, process_site, job_args):
    body = json.dumps(launch_body("job-x", job_args("job-x")))[:-1] + ', "job_meta": {"\\ud83d": 1}}'
    response = as_user("operator").post("/api/v1/jobs/", body, content_type="application/json")
    assert response.status_code == 400 and "a key contains a lone surrogate" in response.json()["job_meta"][0]
    patch = as_user("staff").patch("/api/v1/sites/site-1/", '{"process": {"default_job_env": {"A": "\\udc00"}}}',
                                   content_type="application/json")
    assert patch.status_code == 400 and "process.default_job_env.A" in patch.json(), patch.json()
    assert not Job.objects.exists() and Site.objects.get().process == process_site.process
    assert as_user("staff").get("/api/v1/sites/site-1/").status_code == 200


@pytest.mark.parametrize("text, problem", [
    ("s1: {d1: {source: /x, mode: .inf}}", "number out of range"),
    ("s1: {d1: {source: /x, mode: 1.0e+400}}", "number out of range"),
    ("s1: {d1: {source: 2001-13-45, mode: ro}}", "could not parse the YAML body"),
    ("s1: {d1: {source: 2001-12-14, mode: ro}}", "a date value is not supported (quote it"),
    ('s1: {d1: {source: "\\ud800", mode: ro}}', "lone surrogate"),
    ('s1: {d1: {source: "a\\0b", mode: ro}}', "NUL"),
    ("s1: {d1: {source: !!binary aGVsbG8=, mode: ro}}", "a bytes value is not supported"),
    ("s1: {d1: {source: /x, mode: " + "9" * 5000 + "}}", "could not parse the YAML body"),
    ("s1: {2024-01-01: {source: /x, mode: ro}}", "key datetime.date(2024, 1, 1) is not a string"),
])
def test_yaml_bodies_have_the_same_limits(as_user, process_site, text, problem):
    response = as_user("owner").put("/api/v1/sites/site-1/study-data/", text, content_type="application/yaml")
    assert response.status_code == 400, response.content
    assert problem in json.dumps(response.json(), ensure_ascii=False), response.json()
    assert not Study.objects.exists()


@pytest.mark.parametrize("text", [
    "s1: {d1: {source: 2001-13-45, mode: ro}}", "s1: {d1: {source: /x, mode: " + "9" * 5000 + "}}",
    's1: {d1: {source: "\\ud800", mode: ro}}',
])
def test_the_dashboards_study_import_has_the_same_yaml_limits(client, users, process_site, text):
    client.force_login(users["owner"])
    page = client.post(reverse("study-import", args=["site-1"]), {"action": "preview", "text": text})
    assert page.status_code == 200 and "could not" in page.content.decode()
    assert not Study.objects.exists()


def test_a_kubeconfig_that_is_not_a_kubeconfig_is_a_400_at_save_and_never_a_500(as_user, tmp_path, settings):
    staff = as_user("staff")
    created = staff.post("/api/v1/sites/", {"name": "k8s-1", "backend": "kubernetes"}, format="json")
    assert created.status_code == 201, created.json()
    for content in ("just a string\n", "- a\n- list\n", "contexts: 5\n", "users: [{name: u, user: token}]\n",
                    "current-context: 5\n", "a: [\n"):
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(content)
        response = staff.patch("/api/v1/sites/k8s-1/", {"kubernetes": {"config_file_path": str(kubeconfig)}},
                               format="json")
        assert response.status_code == 400, (content, response.content)
        assert str(kubeconfig) in response.json()["kubernetes.config_file_path"][0]
    assert Site.objects.get(name="k8s-1").kubernetes.get("config_file_path") is None
    # A file that changes into a scalar after it was saved: the connection test says so (no 500).
    kubeconfig = tmp_path / "later"
    Site.objects.filter(name="k8s-1").update(kubernetes={"config_file_path": str(kubeconfig)})
    kubeconfig.write_text("42\n")
    checked = staff.post("/api/v1/sites/k8s-1/test/", {}, format="json")
    assert checked.status_code == 400 and "kubernetes.config_file_path" in checked.json(), checked.content


def test_accept_and_format_are_only_what_the_schema_says(as_user, process_site):
    owner = as_user("owner")
    assert owner.get("/api/v1/sites/site-1/", HTTP_ACCEPT="text/html").status_code == 406
    assert owner.get("/api/v1/sites/site-1/study-data/", HTTP_ACCEPT="application/json")["Content-Type"] == \
        "application/json"
    assert owner.get("/api/v1/sites/site-1/study-data/")["Content-Type"].startswith("application/yaml")
    assert owner.get("/api/v1/sites/site-1/study-data/?format=json")["Content-Type"] == "application/json"
    assert owner.get("/api/v1/sites/site-1/study-data/?format=").status_code == 404
    refused = owner.get("/api/v1/sites/site-1/study-runtime/", HTTP_ACCEPT="text/html")
    assert refused.status_code == 406 and refused["Content-Type"] == "application/json"


@pytest.mark.parametrize("change, field", [
    (lambda b: b.update(job_id=" job-2"), "job_id"),  # no trimming: the pattern is what is checked
    (lambda b: b.update(site="x" * 64), "site"),
    (lambda b: b["job_meta"].update(study=0), "job_meta.study"),
    (lambda b: b["job_meta"].update(resource_spec=5), "job_meta.resource_spec"),
    (lambda b: b["job_args"].update(workspace=["-m", True]), "job_args.workspace"),
    (lambda b: b["job_args"].update(workspace=["-m", "/ws", "x"]), "job_args.workspace"),
    (lambda b: b["job_args"].update(exe_module=["-m", 5]), "job_args.exe_module"),
    (lambda b: b.update(set_options=["-x=1"]), "set_options"),
])
def test_what_the_launch_schema_refuses_the_api_refuses(process_site, as_user, job_args, change, field):
    body = launch_body("job-2", job_args("job-2"))
    change(body)
    response = as_user("operator").post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()
    assert not Job.objects.exists()
