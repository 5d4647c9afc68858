"""flare_launcher_client against a real `manage.py serve` on the process backend: launch, poll,
wait, terminate and NVFlare return codes, idempotent retried launches, refused input, retries on
connection errors, and no credentials in its logs."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from flare_launcher_client import FlareLauncherJobLauncher, LauncherError
from flare_launcher_client.launcher import FlareLauncherClient
from jobs.models import Job
from jobs.services.tokens import token_create
from tests.api.live import free_port
from tests.api.live import launcher_server as launcher_server_fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]
launcher_server = launcher_server_fixture  # a fixture, shared with the other live tests
ROOT = Path(__file__).resolve().parents[2]


class FakeFLContext:
    """The two FLContext calls the launcher makes, with NVFlare's key names."""

    def __init__(self, job_args: dict, set_options: list[str]):
        self.props = {"__job_process_args__": {k: tuple(v) for k, v in job_args.items()},
                      "__args__": SimpleNamespace(set=set_options)}

    def get_prop(self, key, default=None):
        return self.props.get(key, default)

    def set_prop(self, key, value, private=True, sticky=False):
        self.props[key] = value


@pytest.fixture
def launcher(launcher_server, process_site, monkeypatch):
    _, secret = token_create(site=process_site)
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", secret)
    return FlareLauncherJobLauncher(url=launcher_server.url, site="site-1", timeout=30)


def test_job_runs_to_success_and_failure_with_nvflare_return_codes(launcher, job_args, caplog):
    caplog.set_level(logging.DEBUG)
    ok = launcher.launch_job({"job_id": "job-ok", "name": "hello", "deploy_map": {"app": ["@ALL"]}},
                             FakeFLContext(job_args("job-ok"), ["sleep=0.5"]))
    ok.wait()
    assert ok.poll() == 0 and ok.job["state"] == "succeeded"
    failed = launcher.launch_job({"job_id": "job-bad"}, {"job_process_args": job_args("job-bad"), "set_options": ["exit=3"]})
    failed.wait()
    assert failed.poll() == 1 and failed.job["exit_code"] == 3
    assert "SECRET" not in caplog.text  # credentials travel in the body only, never in logs
    meta = Job.objects.get(job_id="job-ok").job_meta
    assert meta["name"] == "hello" and "deploy_map" not in meta  # only launch-relevant meta is sent


def test_poll_is_127_while_running_and_terminate_ends_it_with_9(launcher, job_args):
    handle = launcher.launch_job({"job_id": "job-long"}, FakeFLContext(job_args("job-long"), ["sleep=60"]))
    assert handle.job["state"] == "running"
    assert handle.poll() == 127
    handle.terminate()
    handle.wait()
    assert handle.poll() == 9 and handle.job["state"] == "aborted"
    handle.terminate()  # idempotent
    # Launching the same job again (a retried launch) returns the same job, never a second one.
    again = launcher.launch_job({"job_id": "job-long"}, FakeFLContext(job_args("job-long"), ["sleep=60"]))
    assert again.job_pk == handle.job_pk and again.poll() == 9
    assert Job.objects.filter(job_id="job-long").count() == 1


def test_refused_launch_raises_and_a_dead_launcher_is_retried_then_reported(launcher, job_args):
    args = job_args("job-x")
    args.pop("exe_module")
    with pytest.raises(LauncherError) as info:
        launcher.launch_job({"job_id": "job-x"}, FakeFLContext(args, []))
    assert info.value.status == 400 and "job_args.exe_module" in info.value.body
    with pytest.raises(LauncherError) as info:
        launcher.client.launch({"site": "site-1", "job_id": "job-y", "job_meta": {"colour": "red"},
                                "job_args": job_args("job-y")})
    assert info.value.status == 400 and "job_meta" in info.value.body
    assert not Job.objects.filter(job_id__in=["job-x", "job-y"]).exists()
    dead_url = f"http://127.0.0.1:{free_port()}"
    dead = FlareLauncherClient(dead_url, "flr_x", retries=2, backoff=0.01)
    with pytest.raises(LauncherError) as info:
        dead.job(1)
    assert info.value.status == 0 and str(info.value) == f"FLARE Launcher at {dead_url} unreachable: ConnectionError"


def test_registers_itself_before_job_launch_and_imports_without_django_or_nvflare(monkeypatch):
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", "flr_x")
    launcher = FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1")
    ctx = FakeFLContext({}, [])
    launcher.handle_event("_before_job_launch", ctx)
    assert ctx.get_prop("_job_launcher") == [launcher]
    # nvflare is imported only when the class is first used (to subclass its specs), never on import.
    probe = ("import sys, flare_launcher_client as f; on_import = 'nvflare' in sys.modules; "
             "f.FlareLauncherJobLauncher; print('django' in sys.modules, on_import)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "False"], result.stderr
