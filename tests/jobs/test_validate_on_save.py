"""Validate on save (issue 17, item 2): saving a site runs the checks of Test connection, reports every
problem at once by setting, writes nothing when one fails, and saves with a warning when the engine
cannot be asked. Real dockerd; the unreachable engine is a loopback port nobody listens on."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from jobs.models import Site
from jobs.services import catalog
from tests.util import docker_client_or_skip

pytestmark = [pytest.mark.django_db, pytest.mark.embedded, pytest.mark.docker]

NETWORK = "nvflare-network"


@pytest.fixture
def docker_ready():
    client = docker_client_or_skip(images=False)
    try:
        client.networks.get(NETWORK)
    except Exception:
        pytest.skip(f"the Docker network {NETWORK} is not there")
    finally:
        client.close()


def _workspace(uid: int) -> Path:
    ws = Path(tempfile.mkdtemp(prefix="launcher-vos-"))
    ws.chmod(0o755)
    for sub in ("startup", "local"):
        (ws / sub).mkdir()
    os.chown(ws, uid, uid)
    return ws


@pytest.fixture
def user_ws():
    ws = _workspace(1000)
    yield ws
    shutil.rmtree(ws, ignore_errors=True)


@pytest.fixture
def root_ws():
    ws = _workspace(0)
    yield ws
    shutil.rmtree(ws, ignore_errors=True)


@pytest.fixture
def staff(users):
    client = APIClient()
    client.force_login(users["staff"])
    return client


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _name() -> str:
    return f"vos-{uuid.uuid4().hex[:8]}"


def test_a_missing_network_and_a_root_owned_workspace_are_both_refused_at_create(docker_ready, staff, root_ws):
    name = _name()
    missing = f"no-such-net-{uuid.uuid4().hex[:8]}"
    response = staff.post("/api/v1/sites/", {"name": name, "backend": "docker",
                                             "docker": {"workspace": str(root_ws), "network": missing}}, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert missing in " ".join(body["docker.network"]) and "does not exist" in " ".join(body["docker.network"])
    assert "uid 0" in " ".join(body["docker.user"]) and str(root_ws) in " ".join(body["docker.user"])
    assert not Site.objects.filter(name=name).exists()


def test_a_patch_to_a_root_owned_workspace_is_refused_and_nothing_changes(docker_ready, staff, user_ws, root_ws):
    site = catalog.site_create(name=_name(), backend="docker", docker={"workspace": str(user_ws)})
    ok = staff.patch(f"/api/v1/sites/{site.name}/", {"docker": {"workspace": str(user_ws), "timeout": 20}},
                     format="json")
    assert ok.status_code == 200 and "warnings" not in ok.json(), ok.content

    response = staff.patch(f"/api/v1/sites/{site.name}/", {"docker": {"workspace": str(root_ws)}}, format="json")
    assert response.status_code == 400, response.content
    assert "allow_root" in " ".join(response.json()["docker.user"])
    site.refresh_from_db()
    assert site.docker["workspace"] == str(user_ws) and site.docker["timeout"] == 20

    allowed = staff.patch(f"/api/v1/sites/{site.name}/", {"docker": {"workspace": str(root_ws), "allow_root": True}},
                          format="json")
    assert allowed.status_code == 200, allowed.content


def test_switching_to_docker_without_a_workspace_is_refused(docker_ready, staff, users, process_site, monkeypatch):
    monkeypatch.delenv("NVFL_DOCKER_WORKSPACE", raising=False)
    response = staff.patch(f"/api/v1/sites/{process_site.name}/", {"backend": "docker", "docker": {}}, format="json")
    assert response.status_code == 400, response.content
    assert "no workspace configured" in " ".join(response.json()["docker.workspace"])
    process_site.refresh_from_db()
    assert process_site.backend == "process"


def test_an_unreachable_engine_saves_with_a_warning(staff, user_ws):
    name = _name()
    host = f"tcp://127.0.0.1:{_free_loopback_port()}"
    response = staff.post("/api/v1/sites/", {"name": name, "backend": "docker", "docker": {
        "workspace": str(user_ws), "docker_host": host, "timeout": 3}}, format="json")
    assert response.status_code == 201, response.content
    warnings = response.json()["warnings"]
    assert any(w.startswith("saved; could not check docker.network:") for w in warnings), warnings
    assert Site.objects.filter(name=name).exists()


def test_a_missing_study_image_is_refused_on_site_save(docker_ready, staff, user_ws):
    site = catalog.site_create(name=_name(), backend="docker", docker={"workspace": str(user_ws)})
    image = f"launcher-test/not-here-{uuid.uuid4().hex[:8]}:1"
    catalog.study_create(site=site, name="imaging", image=image)
    response = staff.patch(f"/api/v1/sites/{site.name}/", {"docker": {"workspace": str(user_ws), "timeout": 15}},
                           format="json")
    assert response.status_code == 400, response.content
    assert image in " ".join(response.json()["study.imaging.image"])


def test_test_connection_reports_the_same_messages(docker_ready, staff, root_ws):
    missing = f"no-such-net-{uuid.uuid4().hex[:8]}"
    site = catalog.site_create(name=_name(), backend="docker", docker={"workspace": str(root_ws), "network": missing})
    refused = staff.patch(f"/api/v1/sites/{site.name}/", {"docker": {
        "workspace": str(root_ws), "network": missing, "timeout": 15}}, format="json").json()
    checks = {c["name"]: c for c in staff.post(f"/api/v1/sites/{site.name}/test/", {}, format="json").json()}
    assert not checks["network"]["ok"] and refused["docker.network"] == [checks["network"]["detail"]]
    assert not checks["job user"]["ok"] and refused["docker.user"] == [checks["job user"]["detail"]]


def test_the_dashboard_form_shows_every_problem(docker_ready, users, client, user_ws, root_ws):
    site = catalog.site_create(name=_name(), backend="docker", docker={"workspace": str(user_ws)})
    missing = f"no-such-net-{uuid.uuid4().hex[:8]}"
    client.force_login(users["staff"])
    page = client.get(reverse("site-settings", args=[site.name]))
    form = page.context["form"]
    data = {k: v for k, v in form.initial.items() if v is not None}
    data.update({name: form[name].value() for name in form.fields if form[name].value() is not None})
    data = {k: ("on" if v is True else v) for k, v in data.items() if v is not False}
    data["docker__network"], data["docker__workspace"] = missing, str(root_ws)
    response = client.post(reverse("site-settings", args=[site.name]), data)
    assert response.status_code == 200
    text = response.content.decode()
    assert missing in text and "uid 0" in text
    site.refresh_from_db()
    assert site.docker["network"] == NETWORK and site.docker["workspace"] == str(user_ws)
