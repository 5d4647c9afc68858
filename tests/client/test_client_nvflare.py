"""The client as NVFlare itself uses it: the real nvflare package (from PyPI), a real FLContext
carrying JOB_PROCESS_ARGS and the parent's args, and NVFlare's own JobReturnCode values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_launcher_spec import JobHandleSpec, JobLauncherSpec, JobReturnCode

from flare_launcher_client import FlareLauncherJobLauncher
from jobs.services.tokens import token_create
from tests.api.live import launcher_server as launcher_server_fixture

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]
launcher_server = launcher_server_fixture  # a fixture, shared with the other live tests


def fl_context(job_args: dict, set_options: list[str]) -> FLContext:
    """What NVFlare's client parent puts in the context before calling launch_job."""
    ctx = FLContext()
    ctx.set_prop(FLContextKey.JOB_PROCESS_ARGS, {k: tuple(v) for k, v in job_args.items()}, private=True, sticky=False)
    ctx.set_prop(FLContextKey.ARGS, SimpleNamespace(set=set_options), private=True, sticky=False)
    return ctx


@pytest.fixture
def launcher(launcher_server, process_site, monkeypatch):
    _, secret = token_create(site=process_site)
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", secret)
    return FlareLauncherJobLauncher(url=launcher_server.url, site="site-1", timeout=30)


def test_it_is_an_nvflare_job_launcher_and_returns_nvflare_codes(launcher, job_args):
    assert isinstance(launcher, JobLauncherSpec)

    ok = launcher.launch_job({"job_id": "nv-ok"}, fl_context(job_args("nv-ok"), ["sleep=0.2"]))
    assert isinstance(ok, JobHandleSpec)
    ok.wait()
    assert ok.poll() == JobReturnCode.SUCCESS

    failed = launcher.launch_job({"job_id": "nv-bad"}, fl_context(job_args("nv-bad"), ["exit=5"]))
    failed.wait()
    assert failed.poll() == JobReturnCode.EXECUTION_ERROR

    running = launcher.launch_job({"job_id": "nv-long"}, fl_context(job_args("nv-long"), ["sleep=60"]))
    assert running.poll() == JobReturnCode.UNKNOWN  # still running
    running.terminate()
    running.wait()
    assert running.poll() == JobReturnCode.ABORTED
