"""Who may do what: anonymous, site tokens, viewers, operators, site admins, outsiders, staff;
CSRF on session writes; the failed-token throttle; the OpenAPI schema and docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from jobs.models import Job, Site
from tests.api.conftest import launch_body

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jobs_on_both_sites(process_site, other_site):
    return (Job.objects.create(site=process_site, job_id="a-1", backend="process"),
            Job.objects.create(site=other_site, job_id="b-1", backend="process"))


@pytest.mark.parametrize("method, url", [
    ("get", "/api/v1/jobs/"), ("post", "/api/v1/jobs/"), ("get", "/api/v1/sites/"), ("get", "/api/v1/sites/site-1/"),
    ("get", "/api/v1/sites/site-1/study-data/"), ("get", "/api/v1/jobs/1/wait/?timeout=0"),
])
def test_anonymous_gets_401(process_site, method, url):
    response = getattr(APIClient(), method)(url)
    assert response.status_code == 401 and "detail" in response.json()


@pytest.fixture
def no_failures():
    """Failure counts live in the (per-process, in tests) cache: start and leave it clean."""
    from django.core.cache import cache
    cache.clear()
    yield
    cache.clear()


def test_bad_token_is_401_and_repeated_failures_are_throttled(process_site, settings, no_failures):
    settings.LAUNCHER_FAILED_TOKEN_LIMIT = 3
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token flr_wrong")
    assert [client.get("/api/v1/jobs/").status_code for _ in range(3)] == [401, 401, 401]
    throttled = client.get("/api/v1/jobs/")
    assert throttled.status_code == 429 and 0 < int(throttled["Retry-After"]) <= 60 and "detail" in throttled.json()
    assert client.get("/api/v1/jobs/1/wait/?timeout=0").status_code == 429  # the async view shares the throttle
    # Counted per address: another client is not throttled.
    assert client.get("/api/v1/jobs/", REMOTE_ADDR="10.0.0.2").status_code == 401


def test_a_valid_token_passes_after_many_bad_ones_from_the_same_address(process_site, site_token, no_failures):
    # The FL server's address guessed tokens (or shares a NAT/proxy with someone who did): its own
    # valid token must keep working, or 20 bad requests would lock it out of the API.
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token flr_wrong")
    codes = [bad.get("/api/v1/jobs/").status_code for _ in range(25)]
    assert codes[:20] == [401] * 20 and codes[20:] == [429] * 5
    fl_server = site_token(process_site)
    assert fl_server.get("/api/v1/jobs/").status_code == 200
    assert fl_server.get("/api/v1/jobs/1/wait/?timeout=0").status_code == 404  # past auth: no such job
    assert bad.get("/api/v1/jobs/").status_code == 429  # and the bad ones are still refused


def test_site_token_sees_and_touches_only_its_own_sites_jobs(jobs_on_both_sites, site_token, job_args):
    mine, theirs = jobs_on_both_sites
    client = site_token(mine.site)
    assert [j["id"] for j in client.get("/api/v1/jobs/").json()["results"]] == [mine.pk]
    for url in (f"/api/v1/jobs/{theirs.pk}/", f"/api/v1/jobs/{theirs.pk}/events/", f"/api/v1/jobs/{theirs.pk}/logs/"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/api/v1/jobs/{theirs.pk}/terminate/").status_code == 404
    body = launch_body("x-1", job_args("x-1"))
    body["site"] = "site-2"
    refused = client.post("/api/v1/jobs/", body, format="json")
    assert refused.status_code == 403 and not Job.objects.filter(job_id="x-1").exists()
    assert client.post(f"/api/v1/jobs/{mine.pk}/terminate/").status_code == 202


@pytest.mark.django_db(transaction=True)  # the long poll reads on the shared thread pool: rows must be committed
def test_long_poll_checks_access_like_every_other_endpoint(jobs_on_both_sites, site_token, as_user):
    mine, theirs = jobs_on_both_sites
    client = site_token(mine.site)
    assert client.get(f"/api/v1/jobs/{theirs.pk}/wait/?timeout=0").status_code == 404
    assert client.get(f"/api/v1/jobs/{mine.pk}/wait/?timeout=0").json()["id"] == mine.pk
    assert as_user("outsider").get(f"/api/v1/jobs/{mine.pk}/wait/?timeout=0").status_code == 404
    assert as_user("viewer").get(f"/api/v1/jobs/{mine.pk}/wait/?timeout=0").json()["state"] == "queued"


@pytest.mark.parametrize("method, url, body", [
    ("get", "/api/v1/sites/", None), ("get", "/api/v1/sites/site-1/", None),
    ("patch", "/api/v1/sites/site-1/", {"allowed_data_roots": []}), ("delete", "/api/v1/sites/site-1/", None),
    ("post", "/api/v1/sites/site-1/test/", {}), ("get", "/api/v1/sites/site-1/studies/", None),
    ("post", "/api/v1/sites/site-1/studies/", {"name": "s1"}), ("get", "/api/v1/sites/site-1/study-data/", None),
    ("put", "/api/v1/sites/site-1/study-data/", {}), ("get", "/api/v1/sites/site-1/study-runtime/", None),
])
def test_site_token_cannot_read_or_change_site_configuration(process_site, site_token, method, url, body):
    response = getattr(site_token(process_site), method)(url, body, format="json")
    assert response.status_code == 403, response.content
    assert Site.objects.filter(name="site-1", allowed_data_roots=process_site.allowed_data_roots).exists()


def test_viewer_reads_but_cannot_launch_or_terminate_and_operator_can(jobs_on_both_sites, as_user, job_args):
    mine, _ = jobs_on_both_sites
    viewer, operator = as_user("viewer"), as_user("operator")
    assert viewer.get(f"/api/v1/jobs/{mine.pk}/").status_code == 200
    assert viewer.post(f"/api/v1/jobs/{mine.pk}/terminate/").status_code == 403
    assert viewer.post("/api/v1/jobs/", launch_body("v-1", job_args("v-1")), format="json").status_code == 403
    assert operator.post("/api/v1/jobs/", launch_body("o-1", job_args("o-1")), format="json").status_code == 201
    assert operator.post(f"/api/v1/jobs/{mine.pk}/terminate/").status_code == 202
    assert operator.patch("/api/v1/sites/site-1/", {"allowed_data_roots": []}, format="json").status_code == 403
    assert viewer.get("/api/v1/sites/site-1/").json()["role"] == "viewer"


def test_admin_edits_their_site_outsider_sees_nothing_staff_sees_all(jobs_on_both_sites, as_user, user_token, tmp_path):
    mine, theirs = jobs_on_both_sites
    owner = as_user("owner")
    refused = owner.patch("/api/v1/sites/site-1/", {"allowed_data_roots": [str(tmp_path)]}, format="json")
    assert refused.status_code == 403  # host-level settings are staff's (tests/api/test_settings_policy.py)
    process = {**owner.get("/api/v1/sites/site-1/").json()["process"], "default_job_env": {"A": "1"}}
    changed = owner.patch("/api/v1/sites/site-1/", {"process": process}, format="json")
    assert changed.status_code == 200 and changed.json()["process"]["default_job_env"] == {"A": "1"}
    assert owner.post("/api/v1/sites/", {"name": "site-9"}, format="json").status_code == 403  # staff only
    # The outsider administers site-2 only: site-1 and its jobs do not exist for them.
    outsider = user_token("outsider")
    assert [s["name"] for s in outsider.get("/api/v1/sites/").json()] == ["site-2"]
    assert outsider.get("/api/v1/sites/site-1/").status_code == 404
    assert [j["id"] for j in outsider.get("/api/v1/jobs/").json()["results"]] == [theirs.pk]
    assert outsider.get(f"/api/v1/jobs/{mine.pk}/").status_code == 404
    assert outsider.post(f"/api/v1/jobs/{mine.pk}/terminate/").status_code == 404
    staff = as_user("staff")
    assert {s["name"] for s in staff.get("/api/v1/sites/").json()} == {"site-1", "site-2"}
    assert len(staff.get("/api/v1/jobs/").json()["results"]) == 2
    assert staff.patch("/api/v1/sites/site-2/", {"allowed_data_roots": []}, format="json").status_code == 200


def test_session_writes_need_the_csrf_token(jobs_on_both_sites, as_user):
    mine, _ = jobs_on_both_sites
    client = as_user("operator", csrf=True)
    assert client.get(f"/api/v1/jobs/{mine.pk}/").status_code == 200  # reads need none
    refused = client.post(f"/api/v1/jobs/{mine.pk}/terminate/")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert Job.objects.get(pk=mine.pk).state == "queued"
    client.get("/accounts/login/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    assert client.post(f"/api/v1/jobs/{mine.pk}/terminate/", HTTP_X_CSRFTOKEN=token).status_code == 202


def test_schema_validates_without_warnings_and_docs_are_served_offline(as_user):
    result = subprocess.run([sys.executable, "manage.py", "spectacular", "--validate", "--fail-on-warn", "--file",
                             "/dev/null"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stderr
    client = as_user("viewer")
    schema = client.get("/api/schema/?format=json").json()
    for path in ("/api/v1/jobs/", "/api/v1/jobs/{id}/wait/", "/api/v1/sites/{site}/study-data/",
                 "/api/v1/sites/{site}/studies/{study}/datasets/{dataset}/", "/api/v1/jobs/{id}/terminate/"):
        assert path in schema["paths"], path
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn.jsdelivr" not in docs and "/static/drf_spectacular_sidecar/" in docs
