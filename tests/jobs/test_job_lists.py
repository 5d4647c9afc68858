"""The overview's job list (issue 17, item 4): name, submitter, study, created and duration columns;
search by name or job id; a created date range; sortable columns with numbered pages; the row
fragment live updates fill names from; and "Terminate selected" with a confirmation."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import AuditEntry, Job, JobEvent
from jobs.services.tokens import token_create

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def make_job(site, job_id, *, name=None, days_ago=0, run=None, state="queued", **fields):
    meta = {"job_id": job_id, **({"name": name} if name is not None else {})}
    job = Job.objects.create(site=site, job_id=job_id, backend=site.backend, job_meta=meta, state=state, **fields)
    JobEvent.objects.create(job=job, from_state="", to_state=state, source="api", message="submitted")
    now = timezone.now()
    update = {"created_at": now - timedelta(days=days_ago)}
    if run is not None:  # seconds it ran (finished) or, negative, has been running
        update["started_at"] = now - timedelta(seconds=abs(run) + 5)
        update["finished_at"] = None if run < 0 else update["started_at"] + timedelta(seconds=run)
    Job.objects.filter(pk=job.pk).update(**update)
    return job


@pytest.fixture
def jobs(process_site, users):
    token, _ = token_create(site=process_site, name="fl-server")
    return {
        "hello": make_job(process_site, "0f6a2c5e-a", name="hello-pt", days_ago=10, run=30, state="succeeded",
                          submitted_by=users["operator"]),
        "cifar": make_job(process_site, "1b7d3e4f-b", name="CIFAR10 FedAvg", days_ago=5, run=-600, state="running",
                          submitted_by_token=token, progress={"round": 2, "total_rounds": 3}),
        "nameless": make_job(process_site, "2c8e4f5a-c", days_ago=1, run=5000, state="failed"),
        "queued": make_job(process_site, "3d9f5a6b-d", name="zeta queued"),
    }


def client_for(user):
    client = Client()
    client.force_login(user)
    return client


def row_ids(response):
    assert response.status_code == 200
    return [int(pk) for pk in re.findall(r'<tr data-job="(\d+)"', response.content.decode())]


def cells(response, pk):
    html = response.content.decode()
    row = re.search(rf'<tr data-job="{pk}".*?</tr>', html, re.S).group(0)
    return {col: re.sub(r"<[^>]+>", "", text).strip()
            for col, text in re.findall(r'<td data-col="(\w+)"[^>]*>(.*?)</td>', row, re.S)}


def test_rows_show_name_submitter_study_created_and_duration(jobs, users):
    response = client_for(users["viewer"]).get("/sites/site-1/")
    assert row_ids(response) == [jobs[k].pk for k in ("queued", "nameless", "cifar", "hello")]
    hello, cifar, nameless = (cells(response, jobs[k].pk) for k in ("hello", "cifar", "nameless"))
    assert hello["job"].split() == ["hello-pt", "0f6a2c5e-a"] and hello["submitter"] == "operator"
    assert hello["duration"] == "30s" and hello["created"].startswith(
        (timezone.now() - timedelta(days=10)).strftime("%Y-%m-%d"))
    assert cifar["submitter"] == "site token fl-server" and "round 3/3" in cifar["state"]  # the progress chip stays
    assert cifar["duration"].startswith("10m")  # running for
    assert nameless["job"].split() == ["2c8e4f5a-c", "2c8e4f5a-c"]  # no name: the job id
    assert "select" not in hello  # a viewer gets no checkboxes


def test_search_by_name_or_job_id_and_date_range(jobs, users):
    client = client_for(users["viewer"])
    assert row_ids(client.get("/sites/site-1/", {"q": "fedavg"})) == [jobs["cifar"].pk]
    assert row_ids(client.get("/sites/site-1/", {"q": "2C8E"})) == [jobs["nameless"].pk]
    assert row_ids(client.get("/sites/site-1/", {"state": "running", "q": "b"})) == [jobs["cifar"].pk]
    today = timezone.localdate()
    ranged = client.get("/sites/site-1/", {"created_after": (today - timedelta(days=6)).isoformat(),
                                           "created_before": (today - timedelta(days=1)).isoformat()})
    assert row_ids(ranged) == [jobs["nameless"].pk, jobs["cifar"].pk]


@pytest.mark.parametrize("params, field", [
    ({"created_after": "2026-02-30"}, "created_after"),
    ({"created_before": "soon"}, "created_before"),
    ({"q": "a\x00b"}, "q"),
])
def test_a_bad_filter_is_shown_and_left_out_never_a_500(jobs, users, params, field):
    response = client_for(users["viewer"]).get("/sites/site-1/", params)
    assert len(row_ids(response)) == 4
    assert 'id="f-%s-error"' % {"created_after": "after", "created_before": "before", "q": "q"}[field] \
        in response.content.decode()


@pytest.mark.parametrize("sort, order", [
    ("name", ["nameless", "cifar", "hello", "queued"]),  # names, or the job id, ignoring case
    ("-name", ["queued", "hello", "cifar", "nameless"]),
    ("state", ["queued", "cifar", "hello", "nameless"]),  # lifecycle order
    ("-duration", ["nameless", "cifar", "hello", "queued"]),  # never started: last either way
    ("duration", ["hello", "cifar", "nameless", "queued"]),
    ("created", ["hello", "cifar", "nameless", "queued"]),
])
def test_columns_sort_both_ways(jobs, users, sort, order):
    response = client_for(users["viewer"]).get("/sites/site-1/", {"sort": sort})
    assert row_ids(response) == [jobs[k].pk for k in order]
    html = response.content.decode()
    expected = "descending" if sort.startswith("-") else "ascending"
    assert re.search(rf'aria-sort="{expected}"><a class="sort" href="[^"]*sort=', html)


def test_sorted_lists_page_by_number_with_the_filters_kept(process_site, users):
    for i in range(52):
        make_job(process_site, f"bulk-{i:02d}", name=f"run {i:02d}")
    client = client_for(users["viewer"])
    first = client.get("/sites/site-1/", {"sort": "name", "q": "run"})
    assert len(row_ids(first)) == 50
    assert 'href="?q=run&amp;sort=name&amp;page=2"' in first.content.decode()
    second = client.get("/sites/site-1/", {"sort": "name", "q": "run", "page": "2"})
    assert [Job.objects.get(pk=pk).job_id for pk in row_ids(second)] == ["bulk-50", "bulk-51"]


def test_row_fragment_for_live_updates_stays_within_the_site(jobs, users, other_site):
    client = client_for(users["operator"])
    response = client.get("/sites/site-1/", {"row": jobs["cifar"].pk})
    assert response.status_code == 200
    assert cells(response, jobs["cifar"].pk)["submitter"] == "site token fl-server"
    assert 'name="job" value="%d"' % jobs["cifar"].pk in response.content.decode()  # operators select
    foreign = make_job(other_site, "elsewhere", name="secret")
    assert client.get("/sites/site-1/", {"row": foreign.pk}).status_code == 404


def test_terminate_selected_asks_then_terminates_only_running_jobs_of_the_site(jobs, users, other_site):
    foreign = make_job(other_site, "elsewhere")
    viewer = client_for(users["viewer"])
    assert viewer.post("/sites/site-1/", {"job": [jobs["queued"].pk]}).status_code == 403
    client = client_for(users["operator"])
    chosen = [jobs["queued"].pk, jobs["hello"].pk, foreign.pk]  # one running, one over, one elsewhere
    confirm = client.post("/sites/site-1/", {"job": chosen, "back": "?sort=name"})
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "Terminate 1 job?" in html and "zeta queued" in html and "hello-pt" not in html
    assert Job.objects.get(pk=jobs["queued"].pk).state == "queued"  # nothing happened yet
    done = client.post("/sites/site-1/", {"job": chosen, "confirm": "1", "back": "?sort=name"})
    assert done.status_code == 302 and done["Location"] == "/sites/site-1/?sort=name"
    assert Job.objects.get(pk=jobs["queued"].pk).state == "aborted"
    assert Job.objects.get(pk=foreign.pk).state == "queued"
    assert Job.objects.get(pk=jobs["hello"].pk).state == "succeeded"
    assert AuditEntry.objects.filter(action="job.terminate").count() == 1
    nothing = client.post("/sites/site-1/", {"job": [jobs["hello"].pk], "back": "\r\nSet-Cookie: x"})
    assert nothing.status_code == 302 and nothing["Location"] == "/sites/site-1/"


def test_history_links_to_the_list_of_its_days(jobs, users):
    response = client_for(users["viewer"]).get("/sites/site-1/history/", {"days": "7"})
    start = (timezone.localdate() - timedelta(days=6)).isoformat()
    link = re.search(r'id="history-list" href="([^"]+)"|href="([^"]+)" id="history-list"', response.content.decode())
    url = (link.group(1) or link.group(2)).replace("&amp;", "&")
    assert url == f"/sites/site-1/?created_after={start}&sort=-duration"
    assert row_ids(client_for(users["viewer"]).get(url)) == [jobs["nameless"].pk, jobs["cifar"].pk, jobs["queued"].pk]
