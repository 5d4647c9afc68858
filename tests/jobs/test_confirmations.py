"""Risky dashboard actions ask first and say what they do (issue #17, item 5): revoking a token,
switching a site's backend, renaming a site, deleting a site, a study or a dataset. A POST without
`confirm=yes` (a stale form, a crafted request) is refused with a message and changes nothing."""

from __future__ import annotations

import pytest
from django.urls import reverse

from jobs.models import ApiToken, AuditEntry, Dataset, Job, Site, Study
from jobs.services.tokens import token_create
from tests.util import docker_workspace

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def jobs(site, count: int, state: str = "succeeded"):
    for n in range(count):
        Job.objects.create(site=site, job_id=f"job-{state}-{n}", backend=site.backend, state=state)


def settings_data(client, site, **changes):
    """The settings form as the browser sends it, with `changes`."""
    form = client.get(reverse("site-settings", args=[site.name])).context["form"]
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if value is True:
            data[name] = "on"
        elif value not in (None, False, "", [], {}):
            data[name] = field.prepare_value(value) if not isinstance(value, str) else value
    data.update(changes)
    return data


def test_revoking_a_site_token_says_it_cuts_the_fl_server_off_and_needs_the_confirmation(client, users, process_site):
    token, secret = token_create(site=process_site, name="fl-server")
    client.force_login(users["owner"])
    url = reverse("token-revoke", args=[token.pk])
    page = client.get(url)
    assert page.status_code == 200
    body = page.content.decode()
    assert "FL server of site site-1" in body and "401" in body and 'name="confirm" value="yes"' in body
    crafted = client.post(url)  # what the old one-click button sent
    assert crafted.status_code == 400
    assert "needs its confirmation" in crafted.content.decode()
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None
    api = client.get("/api/v1/jobs/", HTTP_AUTHORIZATION=f"Token {secret}")
    assert api.status_code == 200  # still works: nothing was revoked
    done = client.post(url, {"confirm": "yes"})
    assert done.status_code == 302
    assert ApiToken.objects.get(pk=token.pk).revoked_at is not None
    assert AuditEntry.objects.filter(action="token.revoke").count() == 1
    # The token list links to the confirmation instead of posting.
    listing = client.get(reverse("site-tokens", args=["site-1"])).content.decode()
    assert 'action="/tokens/' not in listing


def test_a_viewer_cannot_even_see_the_revoke_confirmation(client, users, process_site):
    token, _ = token_create(site=process_site, name="fl-server")
    client.force_login(users["viewer"])
    assert client.get(reverse("token-revoke", args=[token.pk])).status_code == 403
    assert client.post(reverse("token-revoke", args=[token.pk]), {"confirm": "yes"}).status_code == 403
    assert ApiToken.objects.get(pk=token.pk).revoked_at is None


def test_switching_the_backend_names_the_jobs_and_waits_for_the_confirmation(client, users, process_site, tmp_path):
    jobs(process_site, 3)
    jobs(process_site, 1, state="running")
    docker_workspace(tmp_path / "docker-ws")
    client.force_login(users["staff"])
    url = reverse("site-settings", args=["site-1"])
    data = settings_data(client, process_site, backend="docker", docker__workspace=str(tmp_path / "docker-ws"))
    first = client.post(url, data)
    assert first.status_code == 200
    body = first.content.decode()
    assert "Site site-1 has 4 job(s), 1 not finished; switching from process to docker" in body
    assert Site.objects.get(pk=process_site.pk).backend == "process"  # nothing yet
    assert 'name="docker__workspace" value="' + str(tmp_path / "docker-ws") in body  # carried to the next step
    confirmed = client.post(url, {**data, "confirm": "yes"})
    assert confirmed.status_code == 302
    assert Site.objects.get(pk=process_site.pk).backend == "docker"


def test_an_invalid_switch_shows_its_errors_not_a_confirmation(client, users, process_site):
    client.force_login(users["staff"])
    data = settings_data(client, process_site, backend="docker", docker__network="bad network!")
    response = client.post(reverse("site-settings", args=["site-1"]), data)
    assert response.context["form"].errors["docker__network"] == ["must be a Docker network name"]
    assert 'id="confirm"' not in response.content.decode()


def test_renaming_a_site_warns_about_the_fl_client_and_needs_the_confirmation(client, users, process_site):
    client.force_login(users["staff"])
    url = reverse("site-settings", args=["site-1"])
    data = settings_data(client, process_site, name="site-renamed")
    first = client.post(url, data)
    assert "Renaming site site-1 to site-renamed breaks its FL client" in first.content.decode()
    assert Site.objects.get(pk=process_site.pk).name == "site-1"
    assert client.post(url, {**data, "confirm": "yes"}).status_code == 302
    assert Site.objects.get(pk=process_site.pk).name == "site-renamed"


def test_ordinary_settings_changes_save_without_a_step(client, users, process_site):
    client.force_login(users["staff"])
    data = settings_data(client, process_site, process__default_job_env='{"A": "1"}')
    assert client.post(reverse("site-settings", args=["site-1"]), data).status_code == 302
    assert Site.objects.get(pk=process_site.pk).process["default_job_env"] == {"A": "1"}


def test_deleting_a_site_is_staff_only_counts_its_jobs_and_needs_the_confirmation(client, users, process_site):
    jobs(process_site, 2)
    url = reverse("site-delete", args=["site-1"])
    client.force_login(users["owner"])  # a site admin, not staff
    assert client.get(url).status_code == 403
    client.force_login(users["staff"])
    page = client.get(url).content.decode()
    assert "Site site-1 has 2 job(s)" in page
    assert client.post(url).status_code == 400
    assert Site.objects.filter(pk=process_site.pk).exists()
    assert client.post(url, {"confirm": "yes"}).status_code == 302
    assert not Site.objects.filter(pk=process_site.pk).exists()


def test_a_site_with_unfinished_jobs_is_not_deleted_even_when_confirmed(client, users, process_site):
    jobs(process_site, 1, state="running")
    client.force_login(users["staff"])
    url = reverse("site-delete", args=["site-1"])
    assert "1 job(s) are not finished" in client.get(url).content.decode()
    response = client.post(url, {"confirm": "yes"}, follow=True)
    assert "was not deleted" in response.content.decode()
    assert Site.objects.filter(pk=process_site.pk).exists()


def test_deleting_a_study_or_a_dataset_needs_the_confirmation(client, users, process_site, study):
    client.force_login(users["owner"])
    dataset_url = reverse("dataset-delete", args=["site-1", "cohort", "train"])
    assert "/data/cohort/train" in client.get(dataset_url).content.decode()
    assert client.post(dataset_url).status_code == 400
    assert Dataset.objects.filter(study=study).exists()
    assert client.post(dataset_url, {"confirm": "yes"}).status_code == 302
    assert not Dataset.objects.filter(study=study).exists()

    study_url = reverse("study-delete", args=["site-1", "cohort"])
    assert client.post(study_url, {"confirm": "no"}).status_code == 400
    assert Study.objects.filter(pk=study.pk).exists()
    assert client.post(study_url, {"confirm": "yes"}).status_code == 302
    assert not Study.objects.filter(pk=study.pk).exists()
