"""Fixtures for the Docker backend tests. No Django here.

Docker tests run against the real daemon (tests.util.docker_client_or_skip): when it cannot be
reached they skip loudly, unless LAUNCHER_REQUIRE_DOCKER=1 is set (CI, `make test`): then they fail. Every test uses a site
name unique to this pytest session, so containers are found and removed by label without touching
anyone else's.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from backends.base import LABEL_SITE, DatasetSpec, JobRequest, StudyRuntime
from backends.docker import DockerBackend, DockerSiteConfig
from tests.util import docker_client_or_skip

IMAGE = "launcher-test/fake-python:1"
JOB_UID, JOB_GID = 1000, 1000
SITE = f"site-{uuid.uuid4().hex[:8]}"  # one per session: the label every test container carries
TOKEN = "tok-Secret-7f3a"
SIGNATURE = "sig-Secret-91bc"
SSID = "ssid-Secret-42"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())


@pytest.fixture(scope="session")
def docker_site() -> str:
    return SITE


@pytest.fixture
def docker_workspace(tmp_path: Path) -> Path:
    """A site workspace with startup/ and local/, owned by the job uid (so `user` defaults to it)."""
    root = tmp_path / "ws"
    for sub in ("startup", "local"):
        (root / sub).mkdir(parents=True)
    (root / "startup" / "fed_client.json").write_text("{}")
    for path in (root, root / "startup", root / "local", root / "startup" / "fed_client.json"):
        os.chown(path, JOB_UID, JOB_GID)
    return root


@pytest.fixture
def docker_data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "train.csv").write_text("a,b\n1,2\n")
    (root / "scratch").mkdir()
    os.chown(root / "scratch", JOB_UID, JOB_GID)
    return root


@pytest.fixture
def make_docker_backend(docker_workspace: Path, docker_data_root: Path, docker_site: str) -> Callable[..., DockerBackend]:
    def make(allowed_data_roots: tuple[str, ...] | None = None, **config: Any) -> DockerBackend:
        settings = {"workspace": str(docker_workspace), "timeout": 20, **config}
        roots = (str(docker_data_root),) if allowed_data_roots is None else allowed_data_roots
        return DockerBackend(site=docker_site, config=DockerSiteConfig.from_dict(settings), allowed_data_roots=roots)

    return make


@pytest.fixture
def docker_request(docker_site: str, docker_data_root: Path) -> Callable[..., JobRequest]:
    """A client job request as an FL client parent would send it; keyword arguments override parts."""

    def make(
        *, job_id: str | None = None, docker: dict[str, Any] | None = None, env: dict[str, str] | None = None,
        study: StudyRuntime | None | str = "default", job_args: dict[str, Any] | None = None, **fields: Any,
    ) -> JobRequest:
        job_id = job_id or str(uuid.uuid4())
        block = {"image": IMAGE} if docker is None else docker
        meta = fields.pop("job_meta", {"job_id": job_id, "launcher_spec": {"default": {"docker": block}}})
        args = {
            "exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
            "workspace": ["-m", "/var/tmp/nvflare/workspace"],
            "startup_dir": ["-w", "/var/tmp/nvflare/workspace/startup"],
            "job_id": ["-n", job_id],
            "client_name": ["-c", docker_site],
            "parent_url": ["-p", "tcp://localhost:8004"],
            "parent_conn_sec": ["--parent_conn_sec", "clear"],
            "startup_config_file": ["-s", "fed_client.json"],
            "auth_token": ["-t", TOKEN],
            "auth_signature": ["-x", SIGNATURE],
            "ssid": ["-d", SSID],
        }
        args.update(job_args or {})
        if study == "default":
            study = StudyRuntime(
                name="cancer",
                datasets=(
                    DatasetSpec(study="cancer", name="images", source=str(docker_data_root / "images"), mode="ro"),
                    DatasetSpec(study="cancer", name="scratch", source=str(docker_data_root / "scratch"), mode="rw"),
                ),
                env=env or {},
            )
        return JobRequest(site=docker_site, job_pk=fields.pop("job_pk", uuid.uuid4().hex), job_id=job_id,
                          job_meta=meta, job_args=args, study=study, **fields)

    return make


# ---------------------------------------------------------------------------------------------
# The real daemon
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker_client_or_skip(timeout=10)
    yield client
    _remove_site_containers(client, SITE)
    client.close()


def _site_containers(client: docker.DockerClient, docker_site: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_SITE}={docker_site}"}, ignore_removed=True)


def _remove_site_containers(client: docker.DockerClient, docker_site: str) -> None:
    for container in _site_containers(client, docker_site):
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture
def docker_site_containers(docker_client: docker.DockerClient, docker_site: str) -> Callable[[], list[Any]]:
    return lambda: _site_containers(docker_client, docker_site)


@pytest.fixture
def docker_backend(request: pytest.FixtureRequest, docker_client: docker.DockerClient, make_docker_backend, docker_site: str):
    """A backend on the real daemon. Afterwards this site's containers are removed; when the test
    failed, their status, logs and inspect data are printed first."""
    yield make_docker_backend()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for container in _site_containers(docker_client, docker_site):
            print(f"--- container {container.name}: {container.status}")
            print(container.logs(tail=50).decode("utf-8", "replace"))
            print(json.dumps(container.attrs.get("State"), indent=1))
    _remove_site_containers(docker_client, docker_site)
