"""A client generated from the served schema (openapi-python-client, pinned in requirements-dev.txt)
launches, polls, waits for and terminates a real job on a real server: the schema is true enough
for code that trusts it, success and error answers alike (issue 14)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from jobs.services.tokens import token_create
from tests.api.conftest import launch_body
from tests.api.live import launcher_server  # noqa: F401  (fixture)
from tests.util import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]
PACKAGE = "flare_launcher_api"


def generate_client(schema: bytes, where: Path):
    """openapi-python-client, offline: no formatter hooks, the package straight into `where`."""
    tool = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert tool, "openapi-python-client is not installed: `make test` installs requirements-dev.txt"
    (where / "schema.json").write_bytes(schema)
    (where / "config.yaml").write_text("post_hooks: []\n")
    done = subprocess.run([tool, "generate", "--path", "schema.json", "--meta", "none", "--config", "config.yaml",
                           "--output-path", str(where / PACKAGE)], cwd=where, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # The only parts it may skip are the YAML bodies of the study files (it takes their JSON form).
    skipped = [line for line in done.stdout.splitlines() if line.startswith("Unsupported content type")]
    assert set(skipped) <= {f"Unsupported content type {t}" for t in ("application/yaml", "application/x-yaml",
                                                                        "text/yaml")}, done.stdout
    sys.path.insert(0, str(where))
    importlib.invalidate_caches()
    return lambda name: importlib.import_module(f"{PACKAGE}.{name}")


def test_a_generated_client_launches_polls_waits_for_and_terminates_a_job(launcher_server, process_site, job_args,
                                                                            tmp_path):
    _, secret = token_create(site=process_site)
    schema = requests.get(f"{launcher_server.url}/api/schema/?format=json",
                          headers={"Authorization": f"Token {secret}"}, timeout=30)
    assert schema.status_code == 200, schema.text
    module = generate_client(schema.content, tmp_path)
    try:
        client = module("client").AuthenticatedClient(base_url=launcher_server.url, token=secret, prefix="Token",
                                                      raise_on_unexpected_status=True, timeout=60)
        jobs_create, jobs_retrieve = module("api.jobs.jobs_create"), module("api.jobs.jobs_retrieve")
        jobs_wait, jobs_terminate = module("api.jobs.jobs_wait_retrieve"), module("api.jobs.jobs_terminate_create")
        models = module("models")

        body = models.JobSubmit.from_dict(launch_body("job-gen", job_args("job-gen"), set_options=["sleep=60"]))
        launched = jobs_create.sync_detailed(client=client, body=body)
        assert launched.status_code == 201, launched.content
        job = launched.parsed
        assert isinstance(job, models.Job) and job.state == models.StateEnum.QUEUED and job.site == "site-1"
        again = jobs_create.sync_detailed(client=client, body=body)  # idempotent: the same job, 200
        assert again.status_code == 200 and again.parsed.id == job.id

        def running():
            polled = jobs_retrieve.sync(client=client, id=job.id)
            assert isinstance(polled, models.JobDetail), polled
            assert polled.state in (models.StateEnum.QUEUED, models.StateEnum.STARTING, models.StateEnum.RUNNING)
            return polled.state == models.StateEnum.RUNNING

        wait_until(running, timeout=30, interval=0.2, message="the job to run")
        still = jobs_wait.sync(client=client, id=job.id, timeout=0.5)
        assert isinstance(still, models.Job) and still.state == models.StateEnum.RUNNING

        stopping = jobs_terminate.sync_detailed(client=client, id=job.id)
        assert stopping.status_code == 202 and stopping.parsed.id == job.id
        ended = jobs_wait.sync(client=client, id=job.id, timeout=30)
        assert ended.state == models.StateEnum.ABORTED, (ended, launcher_server.output())

        missing = jobs_retrieve.sync_detailed(client=client, id=job.id + 1000)
        assert missing.status_code == 404 and isinstance(missing.parsed, models.ErrorDetail)
        refused = jobs_create.sync_detailed(client=client, body=models.JobSubmit.from_dict(
            launch_body("../x", job_args("job-x"))))
        assert refused.status_code == 400 and isinstance(refused.parsed, models.FieldErrors)
        assert "job_id" in refused.parsed.additional_properties
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
