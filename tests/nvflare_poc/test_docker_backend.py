"""A real NVFlare job whose site-1 client runs in a Docker container (image local/nvflare-py, built
locally by tests/images/build_nvflare.sh), the server and site-2 jobs as local processes.

All traffic stays on loopback: the container shares the host's network namespace (staff-only
`docker.allow_host_network`) and `extra_hosts` maps the site name, which NVFlare puts in the job's
parent URL, to 127.0.0.1. site-1's parent works in /var/tmp/nvflare/workspace (see poc.py), the
container-side workspace path, so its job command's paths hold inside the container too."""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.nvflare_poc.checks import check_records, wait_terminal
from tests.nvflare_poc.poc import DOCKER_WORKSPACE, SITES, numpy_job
from tests.util import docker_client_or_skip

pytestmark = [pytest.mark.embedded, pytest.mark.docker, pytest.mark.timeout(240)]
BUILD = Path(__file__).resolve().parents[1] / "images" / "build_nvflare.sh"
IMAGE = f"local/nvflare-py:{version('nvflare')}"  # as build_nvflare.sh names it


def docker_settings() -> dict:
    return {"workspace": str(DOCKER_WORKSPACE), "network": "host", "allow_host_network": True, "allow_root": True,
            "default_job_container_kwargs": {"extra_hosts": {"site-1": "127.0.0.1"}}}


@pytest.fixture
def site_1_on_docker(federation, records):
    """site-1 switched to the Docker backend by staff, and back afterwards."""
    from django.contrib.auth import get_user_model

    from jobs.models import Site
    from jobs.services.catalog import site_update

    docker = docker_client_or_skip(images=False)
    subprocess.run(["sh", str(BUILD)], check=True, timeout=300)  # idempotent; `make services` built it
    staff = get_user_model().objects.get(pk=federation.staff_pk)
    site = Site.objects.get(name="site-1")
    before = dict(site.process)
    site_update(site=site, actor=staff, backend="docker", docker=docker_settings())
    try:
        yield docker
    finally:
        site_update(site=Site.objects.get(name="site-1"), actor=staff, backend="process", process=before)
        for container in docker.containers.list(all=True, filters={"label": "flare-launcher/site=site-1"}):
            container.remove(force=True)


def test_site_1_job_runs_in_a_container_and_the_job_completes(federation, site_1_on_docker, tmp_path):
    poc = federation.poc
    folder = numpy_job(tmp_path, name="numpy-docker", rounds=2)
    meta = json.loads((folder / "meta.json").read_text())
    meta["launcher_spec"] = {"site-1": {"docker": {"image": IMAGE}}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    job_id = poc.submit(folder)
    try:
        assert poc.wait_finished(job_id, timeout=120) == "FINISHED:COMPLETED", poc.log("site-1")[-3000:]
        jobs = wait_terminal(job_id)
        for site in SITES:
            check_records(jobs[site], state="succeeded", return_code=0, tokens=federation.tokens)
        assert {s: jobs[s].backend for s in SITES} == {"server": "process", "site-1": "docker", "site-2": "process"}
        spec = jobs["site-1"].spec
        assert jobs["site-1"].image == IMAGE
        assert spec["options"]["network"] == "host" and spec["options"]["extra_hosts"] == {"site-1": "127.0.0.1"}
        assert any(a.startswith("tcp://site-1:") for a in spec["command"]), spec["command"]  # the parent, by name
        # The container saw the workspace where the parent put it: the job's results are there.
        assert (poc.real_dir("site-1") / job_id).is_dir()
    finally:
        poc.abort_unfinished(job_id)
