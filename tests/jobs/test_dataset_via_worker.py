"""LAUNCHER_ENGINE_VIA_WORKER and dataset saves: in compose the web process mounts no data roots, so
a dataset source's filesystem check (it exists, symlinks resolved) runs where the data is (the
embedded worker here), while the rules on the path's text (absolute, inside the allowed roots, clear
of the workspace) stay on the web. A hook makes a path exist, or not, only while the worker checks."""

from __future__ import annotations

import threading

import pytest
from celery.signals import task_postrun, task_prerun
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from jobs.admin import DatasetAdminForm
from jobs.models import Dataset, Site, Study
from jobs.services.tokens import token_create
from launcher_site.embedded import embedded_worker

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
TASK = "jobs.tasks.dataset_source_task"
NO_WORKER = "the worker did not answer within 1 s"


@pytest.fixture
def worker_view():
    """{"only_there": [...], "not_there": [...]}: paths that exist only while the worker runs a
    dataset check (kept as `<name>.away` otherwise), and paths renamed away only while it does.
    "threads": the thread each check ran in."""
    view: dict[str, list] = {"only_there": [], "not_there": [], "threads": []}

    def swap(path, there: bool):
        away = path.with_name(path.name + ".away")
        (away.rename(path) if there else path.rename(away))

    def before(sender=None, **kwargs):
        if sender.name == TASK:
            view["threads"].append(threading.current_thread().name)
            for path in view["only_there"]:
                swap(path, there=True)
            for path in view["not_there"]:
                swap(path, there=False)

    def after(sender=None, **kwargs):
        if sender.name == TASK:
            for path in view["only_there"]:
                swap(path, there=False)
            for path in view["not_there"]:
                swap(path, there=True)

    task_prerun.connect(before, weak=False)
    task_postrun.connect(after, weak=False)
    yield view
    task_prerun.disconnect(before)
    task_postrun.disconnect(after)


@pytest.fixture
def owner_api(users, process_site):
    _, secret = token_create(user=users["owner"], name="script")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


@pytest.fixture
def owner_page(users):
    page = Client()
    page.force_login(users["owner"])
    return page


@pytest.fixture
def study(process_site):
    return Study.objects.create(site=process_site, name="trial")


def datasets_url(site) -> str:
    return f"/api/v1/sites/{site.name}/studies/trial/datasets/"


def add_on_page(page, site, name: str, source: str):
    return page.post(reverse("study-detail", kwargs={"site": site.name, "study": "trial"}),
                     {"action": "dataset", "name": name, "source": source, "mode": "ro"})


def admin_form(study, source: str) -> DatasetAdminForm:
    return DatasetAdminForm(data={"study": study.pk, "name": "adm", "source": source, "mode": "ro"},
                            instance=Dataset(study=study))


def test_a_dataset_source_is_checked_where_the_worker_is(process_site, study, owner_api, owner_page, data_root,
                                                         settings, worker_view):
    settings.LAUNCHER_ENGINE_VIA_WORKER = True
    (data_root / "cohort-b.away").mkdir()
    worker_view["only_there"][:] = [data_root / "cohort-b"]  # the web process has no such path
    only_there = str(data_root / "cohort-b")
    with embedded_worker(concurrency=2):
        response = owner_api.post(datasets_url(process_site), {"name": "b", "source": only_there}, format="json")
        assert response.status_code == 201, response.content
        assert worker_view["threads"] and threading.current_thread().name not in worker_view["threads"]

        response = add_on_page(owner_page, process_site, "b2", only_there)
        assert response.status_code == 302, response.content.decode()[-2000:]
        assert admin_form(study, only_there).is_valid()  # Django admin's dataset inline

        # The study-file import checks every source in one worker call, before its transaction.
        yaml = f"trial:\n  b3: {{source: {only_there}, mode: ro}}\n"
        response = owner_api.put(f"/api/v1/sites/{process_site.name}/study-data/", yaml,
                                 content_type="application/yaml")
        assert response.status_code == 200, response.content
        assert set(study.datasets.values_list("name", flat=True)) == {"b3"}  # the file is the whole truth

        # Present for the web, absent where the worker runs: the worker's answer refuses it, naming the field.
        worker_view["only_there"][:] = []
        worker_view["not_there"][:] = [data_root / "cohort-a"]
        gone = str(data_root / "cohort-a")
        response = owner_api.post(datasets_url(process_site), {"name": "a", "source": gone}, format="json")
        assert response.status_code == 400 and "does not exist" in response.json()["source"][0], response.content
        response = owner_api.patch(f"{datasets_url(process_site)}b3/", {"source": gone}, format="json")
        assert response.status_code == 400 and "does not exist" in response.json()["source"][0], response.content
        response = add_on_page(owner_page, process_site, "a2", gone)
        assert response.status_code == 200 and "does not exist" in response.content.decode()
        assert "does not exist" in admin_form(study, gone).errors["source"][0]
        response = owner_page.post(reverse("study-import", kwargs={"site": process_site.name}),
                                   {"action": "apply", "text": f"trial:\n  a3: {{source: {gone}, mode: ro}}\n"})
        assert response.status_code == 200 and "does not exist" in response.content.decode()
    assert list(study.datasets.values_list("name", "source")) == [("b3", only_there)]


def test_no_worker_refuses_the_save_saying_why_and_writes_nothing(process_site, study, owner_api, owner_page,
                                                                 data_root, settings):
    settings.LAUNCHER_ENGINE_VIA_WORKER = True
    settings.LAUNCHER_CHECK_DEADLINE_SECONDS = 1
    here = str(data_root / "cohort-a")  # exists for the web: not enough, the worker's view decides
    kept = Dataset.objects.create(study=study, name="kept", source=here, mode="ro")

    response = owner_api.post(datasets_url(process_site), {"name": "a", "source": here}, format="json")
    assert response.status_code == 503 and NO_WORKER in response.json()["detail"], response.content
    response = owner_api.patch(f"{datasets_url(process_site)}kept/", {"mode": "rw"}, format="json")
    assert response.status_code == 503 and NO_WORKER in response.json()["detail"], response.content
    response = owner_api.put(f"/api/v1/sites/{process_site.name}/study-data/",
                             f"trial:\n  a: {{source: {here}, mode: ro}}\n", content_type="application/yaml")
    assert response.status_code == 503 and NO_WORKER in response.json()["detail"], response.content

    response = add_on_page(owner_page, process_site, "a2", here)
    assert response.status_code == 200 and NO_WORKER in response.content.decode()
    response = owner_page.post(reverse("dataset-edit", kwargs={"site": process_site.name, "study": "trial",
                                                               "dataset": "kept"}),
                               {"name": "kept", "source": here, "mode": "rw"})
    assert response.status_code == 200 and NO_WORKER in response.content.decode()
    response = owner_page.post(reverse("study-import", kwargs={"site": process_site.name}),
                               {"action": "apply", "text": f"trial:\n  a3: {{source: {here}, mode: ro}}\n"})
    assert response.status_code == 200 and NO_WORKER in response.content.decode()
    assert NO_WORKER in admin_form(study, here).errors["source"][0]

    # The rules on the path's text need no worker: decided on the web, before the filesystem.
    response = owner_api.post(datasets_url(process_site), {"name": "x", "source": "/etc"}, format="json")
    assert response.status_code == 400 and "allowed data roots" in response.json()["source"][0], response.content
    workspace = process_site.process["workspace"]
    process_site.allowed_data_roots = [*process_site.allowed_data_roots, workspace]
    process_site.save()
    response = owner_api.post(datasets_url(process_site), {"name": "x", "source": f"{workspace}/startup"},
                              format="json")
    assert response.status_code == 400 and "workspace" in response.json()["source"][0], response.content

    assert list(study.datasets.values_list("name", "source", "mode")) == [("kept", here, "ro")]
    kept.refresh_from_db()
    assert kept.mode == "ro"


def test_a_docker_secret_mount_source_is_checked_where_the_worker_is(users, data_root, tmp_path, settings,
                                                                    worker_view):
    """Secret mounts are confined like dataset sources (docs/security.md): the same split."""
    site = Site.objects.create(name="dock-1", backend="docker", allowed_data_roots=[str(data_root)],
                               docker={"workspace": str(tmp_path / "ws")})
    _, secret = token_create(user=users["staff"], name="script")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    settings.LAUNCHER_ENGINE_VIA_WORKER = True

    def put(source: str):
        return api.put(f"/api/v1/sites/{site.name}/study-runtime/", (
            "format_version: 2\nstudies:\n  trial:\n    secret_mounts:\n"
            f"      tls: {{source: {source}, mount_path: /run/secrets/tls}}\n"), content_type="application/yaml")

    (data_root / "tls.away").mkdir()
    worker_view["only_there"][:] = [data_root / "tls"]
    with embedded_worker(concurrency=2):
        response = put(str(data_root / "tls"))
        assert response.status_code == 200, response.content
        assert worker_view["threads"]
    assert Study.objects.get(site=site, name="trial").secret_mounts["tls"]["source"] == str(data_root / "tls")

    settings.LAUNCHER_CHECK_DEADLINE_SECONDS = 1
    response = put(str(data_root / "cohort-a"))  # exists here; no worker to say so
    assert response.status_code == 400, response.content
    assert NO_WORKER in str(response.json()), response.content
    assert Study.objects.get(site=site, name="trial").secret_mounts["tls"]["source"] == str(data_root / "tls")
