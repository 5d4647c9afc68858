"""POST /api/v1/jobs/ on a process site: a command that is not NVFlare's is a 400 naming the field,
and nothing is recorded. A job recorded before the site's policy refused it ends launch_failed."""

from __future__ import annotations

import pytest

from jobs.models import Job
from jobs.services.launching import job_launch
from tests.api.conftest import launch_body

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

ATTACKS = [
    # The reproduced one: timeit runs the code given with its -s flag, as the dashboard's user.
    ({"exe_module": ["-m", "timeit"], "workspace": ["-s", "import os; os.system('id')"]}, {}, "job_args."),
    ({"exe_module": ["-m", "timeit"]}, {}, "job_args.exe_module"),
    ({"exe_module": ["-m", "http.server"]}, {}, "job_args.exe_module"),
    ({"exe_module": ["-c", "import os"]}, {}, "job_args.exe_module"),
    ({"exe_module": ["-m", "fake_nvflare_job\u0000"]}, {}, "job_args.exe_module"),
    ({"workspace": ["-s", "import os; os.system('id')"]}, {}, "job_args.workspace"),
    ({"client_name": ["-c", "--help"]}, {}, "job_args.client_name"),
    ({"parent_url": ["-p", "tcp://x:1\u0000"]}, {}, "job_args.parent_url"),
    ({"auth_token": ["-t", "tok\u0000"]}, {}, "job_args.auth_token"),
    ({}, {"set_options": ["-m", "x=1"]}, "set_options"),
    ({}, {"set_options": ["a=1\u0000"]}, "set_options"),
]


@pytest.mark.parametrize("caller", ["operator", "site token"])
@pytest.mark.parametrize("arg_changes, body_changes, field", ATTACKS)
def test_command_not_nvflares_is_a_400_and_records_nothing(process_site, as_user, site_token, job_args,
                                                           caller, arg_changes, body_changes, field):
    args = job_args("job-x")
    args.update(arg_changes)
    body = launch_body("job-x", args, **body_changes)
    client = as_user("operator") if caller == "operator" else site_token(process_site)
    response = client.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.content
    assert any(key.startswith(field) for key in response.json()), response.json()
    assert not Job.objects.exists()


def test_nvflares_own_module_is_accepted_without_any_setting(process_site, as_user, job_args):
    args = job_args("job-nv")
    args["exe_module"] = ["-m", "nvflare.private.fed.app.client.worker_process"]
    response = as_user("operator").post("/api/v1/jobs/", launch_body("job-nv", args), format="json")
    assert response.status_code == 201, response.content


def test_job_the_policy_now_refuses_ends_launch_failed_with_the_reason(process_site, job_args):
    # Recorded while the site still allowed the module (or before this policy existed).
    job = Job.objects.create(site=process_site, job_id="job-old", backend="process",
                             job_args={**job_args("job-old"), "exe_module": ["-m", "timeit"]})
    job = job_launch(job_pk=job.pk, credentials={})
    assert job.state == "launch_failed" and job.reason == "InvalidSpec"
    message = job.events.last().message
    assert "job_args.exe_module" in message and "may not run on this site" in message


def test_site_whose_jobs_would_run_as_root_refuses_them_at_submit(process_site, as_user, job_args):
    settings = dict(process_site.process)
    settings.pop("allow_root", None)
    process_site.process = {**settings, "user": "0:0"}
    process_site.save()
    response = as_user("operator").post("/api/v1/jobs/", launch_body("job-r", job_args("job-r")), format="json")
    assert response.status_code == 400 and "jobs would run as root" in str(response.json()["process.user"])
    assert not Job.objects.exists()


@pytest.mark.parametrize("command", [["sh", "-c", "id"], "id", None])
def test_a_command_override_in_a_submit_body_is_refused(process_site, as_user, site_token, job_args, command):
    """JobRequest.command is the launcher's own site probe only: the API has no such field, so a body
    that carries one is a 400 naming it, and nothing is recorded or run (StrictSerializer)."""
    body = {**launch_body("job-c", job_args("job-c")), "command": command}
    for client in (as_user("operator"), site_token(process_site)):
        response = client.post("/api/v1/jobs/", body, format="json")
        assert response.status_code == 400, response.content
        assert "command" in response.json(), response.json()
    assert not Job.objects.exists()
