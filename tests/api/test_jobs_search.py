"""GET /api/v1/jobs/ (issue 17, item 4): search by name or job id (`q`), a created date range and
the order (`ordering`, newest or oldest first, still cursor-paginated); bad values are 400s naming
the parameter. The schema declares each of them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import Job

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def make_job(site, job_id, *, name=None, days_ago=0):
    job = Job.objects.create(site=site, job_id=job_id, backend=site.backend,
                             job_meta={"job_id": job_id, **({"name": name} if name is not None else {})})
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(days=days_ago))
    return job


@pytest.fixture
def jobs(process_site):
    return {
        "hello": make_job(process_site, "0f6a2c5e-a", name="hello-pt", days_ago=10),
        "cifar": make_job(process_site, "1b7d3e4f-b", name="CIFAR10 FedAvg", days_ago=5),
        "nameless": make_job(process_site, "2c8e4f5a-hello", days_ago=1),
        "number": make_job(process_site, "3d9f5a6b-d", name=42),
    }


def ids(response):
    assert response.status_code == 200, response.json()
    return [job["id"] for job in response.json()["results"]]


def test_q_finds_jobs_by_name_or_job_id_ignoring_case(jobs, as_user):
    client = as_user("viewer")
    assert ids(client.get("/api/v1/jobs/", {"q": "HELLO"})) == [jobs["nameless"].pk, jobs["hello"].pk]
    assert ids(client.get("/api/v1/jobs/", {"q": "fedavg"})) == [jobs["cifar"].pk]
    assert ids(client.get("/api/v1/jobs/", {"q": "1b7d"})) == [jobs["cifar"].pk]
    assert ids(client.get("/api/v1/jobs/", {"q": "no-such"})) == []
    assert len(ids(client.get("/api/v1/jobs/", {"q": ""}))) == 4  # empty: no filter


def test_a_site_token_searches_only_its_own_sites_jobs(jobs, other_site, site_token):
    make_job(other_site, "hello-elsewhere", name="hello-pt")
    assert ids(site_token(other_site).get("/api/v1/jobs/", {"q": "hello"})) == [
        Job.objects.get(site=other_site).pk]


def test_created_range_is_inclusive_days(jobs, as_user):
    client = as_user("viewer")
    today = timezone.localdate()
    after = (today - timedelta(days=5)).isoformat()
    before = (today - timedelta(days=1)).isoformat()
    assert ids(client.get("/api/v1/jobs/", {"created_after": after})) == [
        jobs["number"].pk, jobs["nameless"].pk, jobs["cifar"].pk]
    assert ids(client.get("/api/v1/jobs/", {"created_after": after, "created_before": before})) == [
        jobs["nameless"].pk, jobs["cifar"].pk]
    assert ids(client.get("/api/v1/jobs/", {"created_before": (today - timedelta(days=6)).isoformat()})) == [
        jobs["hello"].pk]


def test_ordering_oldest_first_keeps_cursor_pages(jobs, as_user):
    client = as_user("viewer")
    first = client.get("/api/v1/jobs/", {"ordering": "created", "page_size": 3})
    assert ids(first) == [jobs["hello"].pk, jobs["cifar"].pk, jobs["nameless"].pk]
    following = client.get(first.json()["next"])
    assert ids(following) == [jobs["number"].pk]
    assert ids(client.get("/api/v1/jobs/", {"ordering": "-created"}))[0] == jobs["number"].pk


@pytest.mark.parametrize("params, field", [
    ({"q": "a\x00b"}, "q"),
    ({"q": "line\nbreak"}, "q"),
    ({"q": "x" * 101}, "q"),
    ({"created_after": "2026-13-01"}, "created_after"),
    ({"created_after": "2026-1-5"}, "created_after"),
    ({"created_after": "٢٠٢٦-01-01"}, "created_after"),
    ({"created_before": "yesterday"}, "created_before"),
    ({"created_after": "2026-03-02", "created_before": "2026-03-01"}, "created_before"),
    ({"ordering": "name"}, "ordering"),
    ({"ordering": "duration"}, "ordering"),
])
def test_bad_values_are_400s_naming_the_parameter(jobs, as_user, params, field):
    response = as_user("viewer").get("/api/v1/jobs/", params)
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]


def test_schema_declares_the_new_parameters(as_user, users):
    schema = as_user("viewer").get("/api/schema/?format=json").json()
    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/jobs/"]["get"]["parameters"]}
    assert parameters["q"]["schema"] == {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]*$", "maxLength": 100}
    for name in ("created_after", "created_before"):  # a date, or empty for "no filter"
        assert parameters[name]["schema"]["pattern"] == "^(?:[0-9]{4}-[0-9]{2}-[0-9]{2})?$", parameters[name]
    assert set(parameters["ordering"]["schema"]["enum"]) == {"created", "-created"}
