"""Dashboard pages through Django's test client: who may see and change what, that everything a
person typed or a job printed is escaped, and that pages carry no inline script or style."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jobs.models import ApiToken, Dataset, Job, JobEvent, Site
from jobs.services import catalog

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def login(client, user):
    client.force_login(user)
    return client


def make_job(site, job_id="job-1", **fields):
    fields.setdefault("backend", site.backend)
    job = Job.objects.create(site=site, job_id=job_id, **fields)
    JobEvent.objects.create(job=job, from_state="", to_state=job.state, source="api", message="submitted")
    return job


def page_urls(site, job, study):
    return [
        reverse("overview"), reverse("site-overview", args=[site.name]), reverse("site-counts", args=[site.name]),
        reverse("job-launch", args=[site.name]), reverse("site-history", args=[site.name]),
        reverse("site-settings", args=[site.name]), reverse("site-tokens", args=[site.name]),
        reverse("studies", args=[site.name]), reverse("study-import", args=[site.name]),
        reverse("study-export", args=[site.name]), reverse("study-detail", args=[site.name, study.name]),
        reverse("study-delete", args=[site.name, study.name]),
        reverse("dataset-edit", args=[site.name, study.name, "train"]),
        reverse("dataset-delete", args=[site.name, study.name, "train"]),
        reverse("job-detail", args=[job.pk]), reverse("job-timeline", args=[job.pk]),
        reverse("job-logs", args=[job.pk]), reverse("job-terminate", args=[job.pk]),
        reverse("user-tokens"), reverse("site-create"),
    ]


def test_anonymous_users_are_sent_to_the_login_page_from_every_page(client, process_site, study):
    job = make_job(process_site)
    for url in page_urls(process_site, job, study):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/?next="), url


def test_a_member_of_site_b_sees_nothing_of_site_1(client, users, process_site, other_site, study):
    job = make_job(process_site, image="secret-image:1")
    login(client, users["outsider"])
    for url in page_urls(process_site, job, study):
        if url in (reverse("overview"), reverse("user-tokens"), reverse("site-create")):
            continue
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("job-terminate", args=[job.pk])).status_code == 404
    home = client.get(reverse("overview"))  # the all-sites home page lists only site-b
    assert home.status_code == 200 and 'data-site="site-b"' in home.content.decode()
    body = home.content.decode()
    assert "site-1" not in body and "secret-image" not in body
    assert client.get(reverse("site-switch"), {"site": "site-1"}).status_code == 404


def test_roles_decide_who_launches_terminates_and_configures(client, users, process_site, study):
    job = make_job(process_site)
    login(client, users["viewer"])
    assert client.get(reverse("site-overview", args=["site-1"])).status_code == 200
    assert client.get(reverse("job-detail", args=[job.pk])).status_code == 200
    for name in ("job-launch", "site-settings", "site-tokens", "study-import"):
        assert client.get(reverse(name, args=["site-1"])).status_code == 403, name
    assert client.post(reverse("job-terminate", args=[job.pk])).status_code == 403
    assert client.post(reverse("studies", args=["site-1"]), {"name": "new-study"}).status_code == 403
    assert "Terminate" not in client.get(reverse("job-detail", args=[job.pk])).content.decode()
    Job.objects.filter(pk=job.pk).update()  # unchanged
    assert Job.objects.get(pk=job.pk).state == "queued"

    login(client, users["operator"])
    assert client.get(reverse("job-launch", args=["site-1"])).status_code == 200
    assert client.get(reverse("site-settings", args=["site-1"])).status_code == 403
    response = client.post(reverse("job-terminate", args=[job.pk]))
    assert response.status_code == 302
    assert Job.objects.get(pk=job.pk).state == "aborted"  # never launched: aborted at once

    login(client, users["owner"])
    assert client.get(reverse("site-settings", args=["site-1"])).status_code == 200
    assert client.get(reverse("site-create")).status_code == 403  # only staff create sites


def test_terminate_needs_the_csrf_token(users, process_site):
    job = make_job(process_site)
    client = login(Client(enforce_csrf_checks=True), users["operator"])
    assert client.post(reverse("job-terminate", args=[job.pk])).status_code == 403
    assert Job.objects.get(pk=job.pk).state == "queued"
    page = client.get(reverse("job-terminate", args=[job.pk]))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    assert client.post(reverse("job-terminate", args=[job.pk]), {"csrfmiddlewaretoken": token}).status_code == 302
    assert Job.objects.get(pk=job.pk).state == "aborted"
    assert JobEvent.objects.filter(job=job, to_state="aborted", message__contains="by operator").exists()


def test_launch_form_builds_nvflare_client_args_and_submits(client, users, process_site, study, django_capture_on_commit_callbacks):
    login(client, users["operator"])
    form = client.get(reverse("job-launch", args=["site-1"])).content.decode()
    default_id = re.search(r'name="job_id" value="([0-9a-f-]{36})"', form).group(1)
    with django_capture_on_commit_callbacks() as callbacks:
        response = client.post(reverse("job-launch", args=["site-1"]), {
            "site": "site-1", "job_id": default_id, "study": "cohort", "image": "",
            "exe_module": "fake_nvflare_job", "set_options": "sleep=1 exit=0", "options": ""})
    job = Job.objects.get(job_id=default_id)
    assert response.status_code == 302 and response["Location"] == reverse("job-detail", args=[job.pk])
    assert job.study == "cohort" and job.submitted_by == users["operator"]
    assert job.job_args["exe_module"] == ["-m", "fake_nvflare_job"]
    assert job.job_args["client_name"] == ["-c", "site-1"] and job.job_args["job_id"] == ["-n", default_id]
    assert job.set_options == ["sleep=1", "exit=0"]
    assert len(callbacks) == 2  # publish + the launch task


def test_launch_form_default_module_is_the_nvflare_client_worker(users, process_site):
    from jobs.forms import LaunchForm

    form = LaunchForm(sites=[process_site], studies=[])
    assert form.fields["exe_module"].initial == "nvflare.private.fed.app.client.worker_process"


def test_launch_errors_are_shown_on_the_matching_field(client, users, process_site):
    login(client, users["operator"])
    url = reverse("job-launch", args=["site-1"])
    base = {"site": "site-1", "study": "", "exe_module": "fake_nvflare_job", "set_options": "", "options": ""}
    response = client.post(url, {**base, "job_id": "job-x", "image": "busybox:1"})
    assert response.status_code == 200
    form = response.context["form"]
    assert "unsupported job-controlled process option 'image'" in form.errors["image"][0]
    response = client.post(url, {**base, "job_id": "bad id!", "image": ""})
    assert "must start with a letter or digit" in response.context["form"].errors["job_id"][0]
    response = client.post(url, {**base, "job_id": "job-y", "image": "", "options": "{not json"})
    assert "Enter valid JSON" in response.context["form"].errors["options"][0]
    assert not Job.objects.exists()


def test_user_input_and_job_output_are_escaped(client, users, process_site):
    evil = '<script>alert("x")</script>'
    job = make_job(process_site, job_id="job-evil", image=f"img{evil}", study="cohort", state="failed",
                   logs_tail="<b>html in a log line</b>\n" + evil, detail=evil, reason="<i>oops</i>",
                   spec={"name": evil}, return_code=1)
    JobEvent.objects.create(job=job, from_state="queued", to_state="failed", source="worker", message=evil)
    catalog.study_create(site=process_site, name="cohort", description=evil)
    login(client, users["viewer"])
    pages = [client.get(reverse("job-detail", args=[job.pk])), client.get(reverse("site-overview", args=["site-1"])),
             client.get(reverse("studies", args=["site-1"]))]
    for page in pages:
        body = page.content.decode()
        assert evil not in body and "<b>html" not in body and "<i>oops" not in body
    detail = pages[0].content.decode()
    assert "&lt;b&gt;html in a log line&lt;/b&gt;" in detail and "&lt;script&gt;" in detail
    assert "execution error" in detail  # the return code in words
    download = client.get(reverse("job-logs", args=[job.pk]))
    assert download["Content-Type"].startswith("text/plain") and "attachment" in download["Content-Disposition"]
    assert download.content.decode().startswith("<b>html in a log line</b>")
    timeline = client.get(reverse("job-timeline", args=[job.pk])).json()
    assert timeline["events"][-1]["message"] == evil  # JSON for textContent, never HTML


INLINE = [re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I),
          re.compile(r"\sstyle\s*=", re.I), re.compile(r"\son[a-z]+\s*=", re.I)]


def test_pages_have_no_inline_script_style_or_handlers_and_send_csp(client, users, process_site, study):
    job = make_job(process_site)
    login(client, users["staff"])
    for url in page_urls(process_site, job, study):
        response = client.get(url, follow=True)
        assert response.status_code == 200, url
        if response["Content-Type"].startswith("text/html"):
            body = response.content.decode()
            for pattern in INLINE:
                assert not pattern.search(body), (url, pattern.pattern)
            assert "script-src 'self'" in response["Content-Security-Policy"]
            assert "unsafe-inline" not in response["Content-Security-Policy"]


def test_overview_pages_with_keyset_cursors_and_filters(client, users, process_site):
    Job.objects.bulk_create([Job(site=process_site, job_id=f"job-{i:03d}", backend="process",
                                 state="succeeded" if i % 2 else "failed", study="s1" if i % 3 else "s2")
                             for i in range(120)])
    login(client, users["viewer"])
    url = reverse("site-overview", args=["site-1"])
    first = client.get(url).context
    ids = [j.job_id for j in first["page"]["jobs"]]
    assert ids == [f"job-{i:03d}" for i in range(119, 69, -1)]
    assert first["page"]["newer"] is None and first["counts"]["succeeded"] == 60 and first["counts"]["failed"] == 60
    second = client.get(url, {"before": first["page"]["older"]}).context
    assert [j.job_id for j in second["page"]["jobs"]][0] == "job-069"
    back = client.get(url, {"after": second["page"]["newer"]}).context
    assert [j.job_id for j in back["page"]["jobs"]] == ids
    filtered = client.get(url, {"state": "failed", "study": "s2", "q": "job-0"}).context
    got = [j.job_id for j in filtered["page"]["jobs"]]
    assert got and all(int(j[4:]) % 2 == 0 and int(j[4:]) % 3 == 0 and j.startswith("job-0") for j in got)
    assert client.get(reverse("site-counts", args=["site-1"])).json()["counts"]["failed"] == 60


def test_site_settings_show_service_messages_on_the_right_field(client, users, process_site):
    login(client, users["staff"])  # host-level settings are staff's (tests/jobs/test_settings_policy.py)
    url = reverse("site-settings", args=["site-1"])
    page = client.get(url).context["form"]
    data = {name: page[name].value() or "" for name in page.fields}
    data = {k: v for k, v in data.items() if not isinstance(v, bool)}
    data["allowed_data_roots"] = "\n".join(process_site.allowed_data_roots)
    data["process__default_job_env"] = '{"PYTHONPATH": "/x"}'
    data["process__workspace"] = "relative/path"
    response = client.post(url, data)
    assert response.status_code == 200
    assert response.context["form"].errors["process__workspace"] == ["must be an absolute directory path"]
    assert 'id="id_process__workspace_error"' in response.content.decode()

    data.update(backend="docker", docker__network="bad network!")
    response = client.post(url, data)
    assert response.context["form"].errors["docker__network"] == ["must be a Docker network name"]
    assert Site.objects.get(pk=process_site.pk).backend == "process"

    data.update(backend="process", process__workspace="/tmp/somewhere-absolute")
    response = client.post(url, data)
    assert response.status_code == 302
    assert Site.objects.get(pk=process_site.pk).process["workspace"] == "/tmp/somewhere-absolute"


def test_dataset_form_shows_the_catalog_messages(client, users, process_site, study, data_root):
    login(client, users["owner"])
    url = reverse("study-detail", args=["site-1", "cohort"])
    response = client.post(url, {"action": "dataset", "name": "Bad Name", "source": "/nowhere", "mode": "ro"})
    errors = response.context["dataset_form"].errors
    assert "Invalid name" in errors["name"][0]
    assert "not under the site's allowed data roots" in errors["source"][0]
    (data_root / "valid").mkdir()
    response = client.post(url, {"action": "dataset", "name": "valid", "source": str(data_root / "valid"), "mode": "rw"})
    assert response.status_code == 302
    assert Dataset.objects.get(study=study, name="valid").mode == "rw"


def test_study_data_import_previews_before_it_applies(client, users, process_site, study, data_root):
    (data_root / "test").mkdir()
    catalog.dataset_create(study=study, name="old", source=str(data_root / "cohort-a"))
    text = (f"cohort:\n  train:\n    source: {data_root / 'cohort-a'}\n    mode: rw\n"
            f"  test:\n    source: {data_root / 'test'}\n    mode: ro\n")
    login(client, users["owner"])
    url = reverse("study-import", args=["site-1"])
    response = client.post(url, {"action": "preview", "text": text})
    preview = response.context["preview"]
    assert {(c.dataset, c.change) for c in preview.changes} == {("train", "changed"), ("test", "added"), ("old", "removed")}
    assert preview.applicable
    assert set(Dataset.objects.filter(study=study).values_list("name", flat=True)) == {"train", "old"}  # nothing yet
    response = client.post(url, {"action": "apply", "text": text})
    assert response.status_code == 302
    assert {(d.name, d.mode) for d in Dataset.objects.filter(study=study)} == {("train", "rw"), ("test", "ro")}

    bad = client.post(url, {"action": "preview", "text": "cohort: [1, 2]"})
    assert "study -> dataset" in bad.context["form"].errors["text"][0]
    missing = client.post(url, {"action": "preview", "text": "cohort:\n  x:\n    source: /does/not/exist\n    mode: ro\n"})
    assert any("not under the site's allowed data roots" in e for e in missing.context["preview"].errors)
    assert not missing.context["preview"].applicable
    export = client.get(reverse("study-export", args=["site-1"]))
    assert "test:" in export.content.decode() and export["Content-Type"].startswith("application/yaml")


def test_tokens_show_the_secret_once_and_can_be_revoked(client, users, process_site):
    login(client, users["owner"])
    response = client.post(reverse("site-tokens", args=["site-1"]), {"name": "fl-server"})
    secret = response.context["secret"]
    assert secret.startswith("flr_") and secret in response.content.decode()
    token = ApiToken.objects.get(site=process_site)
    assert secret not in client.get(reverse("site-tokens", args=["site-1"])).content.decode()
    # Revoking asks first (tests/jobs/test_confirmations.py); confirmed, it revokes.
    client.post(reverse("token-revoke", args=[token.pk]), {"confirm": "yes"})
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None

    mine = client.post(reverse("user-tokens"), {"name": "laptop"}).context["secret"]
    assert ApiToken.objects.get(user=users["owner"]).prefix == mine[:12]
    login(client, users["viewer"])  # not an admin of the site, not the owner of the user token
    assert client.post(reverse("token-revoke", args=[ApiToken.objects.get(user=users["owner"]).pk])).status_code == 403


def test_history_draws_finished_jobs_per_day_and_durations(client, users, process_site):
    now = timezone.now()
    for i, (state, seconds) in enumerate([("succeeded", 5), ("succeeded", 120), ("failed", 30), ("aborted", 4000)]):
        make_job(process_site, job_id=f"h{i}", state=state, started_at=now - timedelta(seconds=seconds + 1),
                 finished_at=now - timedelta(seconds=1))
    make_job(process_site, job_id="still-running", state="running", started_at=now)
    login(client, users["viewer"])
    response = client.get(reverse("site-history", args=["site-1"]))
    context = response.context
    assert context["totals"]["succeeded"] == 2 and context["totals"]["failed"] == 1
    assert [b["n"] for b in context["duration_bars"]] == [1, 1, 1, 0, 1, 0]
    body = response.content.decode()
    assert body.count('class="bar state-succeeded"') == 1 and 'class="bar duration"' in body


def _grow_to(site, rows: int) -> int:
    """Bulk-create 1000 varied jobs, then double them in SQL (INSERT ... SELECT) until >= rows."""
    from django.db import connection

    Job.objects.bulk_create(Job(site=site, job_id=f"bulk-{i}", backend="process", study=("a", "b")[i % 2],
                                state=("succeeded", "failed", "running")[i % 3]) for i in range(1000))
    columns = [f.column for f in Job._meta.concrete_fields if f.column != "id"]
    values = ["job_id || '.' || %s" if c == "job_id" else c for c in columns]
    total, step = 1000, 0
    with connection.cursor() as cursor:
        while total < rows:
            step += 1
            cursor.execute(f"INSERT INTO jobs_job ({', '.join(columns)}) SELECT {', '.join(values)} FROM jobs_job "
                           "WHERE site_id = %s", [str(step), site.pk])
            total *= 2
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE jobs_job")
    return total


def test_overview_stays_fast_with_100000_jobs(client, users, process_site):
    import time

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    total = _grow_to(process_site, 100_000)
    assert Job.objects.filter(site=process_site).count() == total >= 100_000
    login(client, users["viewer"])
    url = reverse("site-overview", args=["site-1"])
    oldest = Job.objects.filter(site=process_site).order_by("id").values_list("id", flat=True).first()
    timings = {}
    for label, params in [("first page", {}), ("deep page", {"before": oldest + 60_000}),
                          ("state+study", {"state": "failed", "study": "b"}), ("text", {"q": "bulk-99."})]:
        client.get(url, params)  # warm
        started = time.perf_counter()
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url, params)
        timings[label] = time.perf_counter() - started
        assert response.status_code == 200 and len(response.context["page"]["jobs"]) == 50, label
        sql = [q["sql"].upper() for q in queries.captured_queries]
        # One grouped count (by state) is the only aggregate over the site's jobs; no plain COUNT(*).
        assert not [q for q in sql if "COUNT(" in q and "GROUP BY" not in q and "JOBS_JOB" in q], label
    print(f"overview timings with {total} jobs:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
    assert max(timings.values()) < 1.0, timings
