"""Dashboard forms answer with every problem at once (issue #17, item 6): the form's own field
checks and the service's, in the order of the fields, with a summary at the top that links to
each field, the message inline on the field, and ids unique on every page."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from jobs.models import Dataset, Site, Study
from jobs.services import catalog
from tests.util import docker_workspace

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def ids(html: str) -> Counter:
    return Counter(re.findall(r'\sid="([^"]+)"', html))


def summary_links(html: str, summary_id: str) -> list[str]:
    block = re.search(rf'<div class="error-summary" role="alert" id="{summary_id}"[^>]*>(.*?)</div>', html, re.S)
    assert block, f"no error summary {summary_id}"
    return re.findall(r'<a href="#([^"]+)">', block.group(1))


def service_message(call, key: str) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        call()
    return exc.value.message_dict[key]


def create_post(data_root, **changes):
    data = {"name": "site-new", "backend": "docker", "allowed_data_roots": str(data_root),
            "docker__workspace": "", "docker__network": "", "docker__timeout": ""}
    data.update(changes)
    return data


def test_a_new_site_with_five_problems_gets_all_of_them_in_one_answer(client, users, data_root):
    client.force_login(users["staff"])
    response = client.post(reverse("site-create"), create_post(
        data_root, name="Bad Name!", allowed_data_roots="relative/root\n/", docker__workspace="not/absolute",
        docker__network="bad network!", docker__timeout="999"))
    assert response.status_code == 200
    assert not Site.objects.filter(name__iexact="bad name!").exists()
    errors = response.context["form"].errors
    # Before, the data roots stopped the service at the first bad root and hid the rest.
    assert set(errors) >= {"name", "allowed_data_roots", "docker__workspace", "docker__network", "docker__timeout"}
    assert len(errors["allowed_data_roots"]) == 2
    # The same words as the API's service, each problem once.
    assert errors["docker__network"] == service_message(
        lambda: catalog.site_create(name="x", backend="docker", docker={"network": "bad network!"}), "docker.network")
    assert errors["docker__timeout"] == service_message(
        lambda: catalog.site_create(name="x", backend="docker", docker={"timeout": 999}), "docker.timeout")
    assert errors["name"] == service_message(lambda: catalog.site_create(name="Bad Name!"), "name")
    body = response.content.decode()
    # The summary lists them in the order of the fields and links to each.
    links = summary_links(body, "sitesettings-errors")
    assert links == ["id_name", "id_allowed_data_roots", "id_allowed_data_roots", "id_docker__workspace",
                     "id_docker__network", "id_docker__timeout"]
    assert re.search(r'id="sitesettings-errors"[^>]*autofocus', body)  # focus lands on the summary
    network = re.search(r'<input[^>]*id="id_docker__network"[^>]*>', body).group(0)
    assert 'aria-invalid="true"' in network and "id_docker__network_error" in network
    assert ids(body)["id_docker__network_error"] == 1


def test_a_fixed_site_form_then_saves(client, users, data_root, tmp_path):
    client.force_login(users["staff"])
    docker_workspace(tmp_path / "ws-new")
    response = client.post(reverse("site-create"), create_post(data_root, docker__workspace=str(tmp_path / "ws-new")))
    assert response.status_code == 302, response.context["form"].errors
    assert Site.objects.get(name="site-new").backend == "docker"


def test_a_study_gets_the_form_and_the_service_errors_together(client, users, process_site):
    client.force_login(users["owner"])
    response = client.post(reverse("studies", args=["site-1"]),
                           {"name": "Bad Name", "env": "NO_EQUALS_SIGN\nOK=1\nALSO BAD", "description": "x"})
    assert response.status_code == 200 and not Study.objects.exists()
    errors = response.context["form"].errors
    # `name` is judged by the service, `env` by the form: before, the form's error alone came back.
    assert errors["name"] == service_message(lambda: catalog.study_create(site=process_site, name="Bad Name"), "name")
    assert errors["env"] == ["Line 1: expected NAME=value.", "Line 3: expected NAME=value."]
    assert summary_links(response.content.decode(), "study-errors") == ["id_name", "id_env", "id_env"]


def test_a_dataset_gets_all_three_problems_at_once(client, users, process_site, study):
    client.force_login(users["owner"])
    response = client.post(reverse("study-detail", args=["site-1", "cohort"]),
                           {"action": "dataset", "name": "Bad Name", "source": "/nowhere", "mode": "zzz"})
    errors = response.context["dataset_form"].errors
    assert set(errors) == {"name", "source", "mode"}  # before: the bad mode alone
    assert "Invalid name" in errors["name"][0]
    assert "not under the site's allowed data roots" in errors["source"][0]
    assert "zzz is not one of the available choices" in errors["mode"][0]
    assert Dataset.objects.filter(study=study).count() == 1
    body = response.content.decode()
    assert summary_links(body, "dataset-errors") == ["dataset-name", "dataset-source", "dataset-mode"]


def test_dataset_edit_reports_everything_and_keeps_the_row(client, users, process_site, study):
    client.force_login(users["owner"])
    url = reverse("dataset-edit", args=["site-1", "cohort", "train"])
    response = client.post(url, {"name": "Bad Name", "source": "/nowhere", "mode": "zzz"})
    assert set(response.context["form"].errors) == {"name", "source", "mode"}
    assert Dataset.objects.get(study=study).name == "train"


def test_token_form_errors_have_a_summary(client, users):
    client.force_login(users["owner"])
    response = client.post(reverse("user-tokens"), {"name": "x" * 101})
    assert summary_links(response.content.decode(), "token-errors") == ["id_name"]


def test_every_form_page_has_unique_ids_and_study_name_has_its_label(client, users, process_site, study):
    client.force_login(users["staff"])
    pages = [reverse("site-create"), reverse("site-settings", args=["site-1"]), reverse("studies", args=["site-1"]),
             reverse("study-detail", args=["site-1", "cohort"]), reverse("study-import", args=["site-1"]),
             reverse("dataset-edit", args=["site-1", "cohort", "train"]), reverse("site-tokens", args=["site-1"]),
             reverse("user-tokens"), reverse("study-delete", args=["site-1", "cohort"]),
             reverse("site-delete", args=["site-1"])]
    for url in pages:
        body = client.get(url).content.decode()
        duplicates = [i for i, n in ids(body).items() if n > 1]
        assert not duplicates, (url, duplicates)
    # Both forms of the study page, with errors at once still unique.
    body = client.post(reverse("study-detail", args=["site-1", "cohort"]),
                       {"action": "study", "name": "", "env": "bad"}).content.decode()
    assert not [i for i, n in ids(body).items() if n > 1]
    assert re.search(r'<label for="study-name">Study name', body)
    assert re.search(r'<label for="dataset-name">Dataset name', body)
