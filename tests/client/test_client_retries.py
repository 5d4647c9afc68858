"""What the client does with each kind of answer, against a real HTTP server that answers from a
script: wait() and poll() never raise (5xx, connection errors and garbled answers are asked again,
404 means the job is gone, 401 re-reads the token file); the launch is retried on 5xx and waits for
the job to run with one long poll (`until=running`), not with polling; return codes pass through."""

from __future__ import annotations

import logging

import pytest

from flare_launcher_client import (
    FlareLauncherClient,
    FlareLauncherJobLauncher,
    LauncherError,
)
from flare_launcher_client import launcher as launcher_module
from tests.api.live import free_port
from tests.client.scripted import ScriptedLauncher

SECRET = "flr_SECRET-never-logged"
JOB_ARGS = {"exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"], "workspace": ["-m", "/ws"],
            "job_id": ["-n", "j1"], "client_name": ["-c", "site-1"]}


def job(state: str, **extra) -> dict:
    return {"id": 7, "job_id": "j1", "state": state, "return_code": None, **extra}


@pytest.fixture
def scripted():
    server = ScriptedLauncher()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def site_token(monkeypatch):
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", SECRET)  # the FL parent's environment


def handle_for(client: FlareLauncherClient, job_answer: dict):
    return launcher_module.handle_class()(client, job_answer, retry_max_seconds=0.05)


def client_for(url: str, token=SECRET) -> FlareLauncherClient:
    return FlareLauncherClient(url, token, retries=3, backoff=0.01, max_backoff=0.05)


def test_wait_rides_out_server_errors_and_garbled_answers_until_the_job_ends(scripted, caplog):
    caplog.set_level(logging.DEBUG)
    scripted.script("GET", "/api/v1/jobs/7/wait/",
                    (500, "<h1>Internal Server Error</h1>"), (502, "bad gateway"),
                    (503, {"detail": "x"}, {"Retry-After": "0"}),
                    (200, "<html>a proxy page</html>"), (200, [1, 2]), (200, job("running")), (409, {"detail": "?"}),
                    (200, job("succeeded", return_code=0)))
    handle = handle_for(client_for(scripted.url), job("running"))
    handle.wait()
    assert handle.poll() == 0 and handle.job["state"] == "succeeded"
    assert scripted.count("GET", "/api/v1/jobs/7/wait/") == 8
    assert SECRET not in caplog.text


def test_wait_and_poll_keep_going_while_the_launcher_is_unreachable(caplog):
    dead_url = f"http://127.0.0.1:{free_port()}"
    handle = handle_for(client_for(dead_url), job("running"))
    assert handle.poll() == 127  # never raises
    handle.wait_once(1)  # one failed long poll: logged, no exception
    assert f"FLARE Launcher at {dead_url} unreachable: ConnectionError" in caplog.text


def test_a_job_gone_from_the_launcher_ends_the_wait_as_aborted(scripted):
    scripted.script("GET", "/api/v1/jobs/7/wait/", (404, {"detail": "No Job matches the given query."}))
    handle = handle_for(client_for(scripted.url), job("running"))
    handle.wait()
    assert handle.poll() == 9 and handle.job["state"] == "lost"


def test_a_refused_token_is_read_again_from_its_file_and_the_wait_goes_on(scripted, tmp_path):
    token_file = tmp_path / "flare.token"
    token_file.write_text("flr_old\n")
    token_file.chmod(0o600)
    launcher = FlareLauncherJobLauncher(url=scripted.url, site="site-1", token_file=str(token_file))
    scripted.script("GET", "/api/v1/jobs/7/wait/", (401, {"detail": "Invalid token."}),
                    (200, job("failed", return_code=1)))
    token_file.write_text("flr_new\n")  # rotated after the launcher was built
    handle = handle_for(launcher.client, job("running"))
    handle.wait()
    assert handle.poll() == 1
    assert [auth for _, _, auth in scripted.requests] == ["Token flr_old", "Token flr_new"]


def test_poll_never_raises_on_errors_and_keeps_a_terminal_answer(scripted):
    scripted.script("GET", "/api/v1/jobs/7/", (500, "oops"), (200, "<html>"), (500, "oops"))
    handle = handle_for(client_for(scripted.url), job("running"))
    assert handle.poll() == 127 and handle.poll() == 127
    scripted.answers.clear()
    scripted.script("GET", "/api/v1/jobs/7/", (200, job("aborted", return_code=9)))
    assert handle.poll() == 9
    scripted.script("GET", "/api/v1/jobs/7/", (500, "later errors do not change a terminal answer"))
    assert handle.poll() == 9


def test_launch_is_retried_on_5xx_and_then_waits_for_running_with_one_long_poll(scripted):
    scripted.script("POST", "/api/v1/jobs/", (500, "boom"), (503, {"detail": "busy"}), (201, job("queued")))
    scripted.script("GET", "/api/v1/jobs/7/wait/", (200, job("running")))
    launcher = FlareLauncherJobLauncher(url=scripted.url, site="site-1", timeout=30)
    launcher.client.backoff = 0.01
    handle = launcher.launch_job({"job_id": "j1"}, {"job_process_args": JOB_ARGS})
    assert handle.job["state"] == "running"
    assert scripted.count("POST", "/api/v1/jobs/") == 3
    waits = [path for method, path, _ in scripted.requests if method == "GET"]
    assert len(waits) == 1 and "until=running" in waits[0], waits  # no GET /jobs/7/ polling


def test_why_a_job_still_waits_reaches_the_fl_parents_log(scripted, caplog):
    caplog.set_level(logging.INFO, logger="flare_launcher_client")
    unreachable = "launch attempt 1 of 9 failed: Docker daemon at tcp://127.0.0.1:1 is unreachable (connection refused)"
    scripted.script("POST", "/api/v1/jobs/", (201, job("queued", detail="queued")))
    scripted.script("GET", "/api/v1/jobs/7/wait/", (200, job("queued", detail=unreachable)),
                    (200, job("queued", detail=unreachable)), (200, job("running", detail="workload running")))
    launcher = FlareLauncherJobLauncher(url=scripted.url, site="site-1", timeout=30)
    launcher.launch_job({"job_id": "j1"}, {"job_process_args": JOB_ARGS})
    assert caplog.text.count(unreachable) == 1  # logged when it changes, not on every answer


def test_a_refused_launch_names_the_url_and_is_not_retried(scripted):
    scripted.script("POST", "/api/v1/jobs/", (400, {"job_args.exe_module": ["This field is required."]}))
    launcher = FlareLauncherJobLauncher(url=scripted.url + "/", site="site-1")
    with pytest.raises(LauncherError) as info:
        launcher.launch_job({"job_id": "j1"}, {"job_process_args": JOB_ARGS})
    assert info.value.status == 400
    assert str(info.value).startswith(f"FLARE Launcher at {scripted.url}: POST /jobs/: 400")
    assert scripted.count("POST", "/api/v1/jobs/") == 1


@pytest.mark.parametrize(("answer", "code"), [
    (job("launch_failed"), 104),  # never started, no code given: NVFlare's INFRASTRUCTURE_ERROR
    (job("launch_failed", return_code=104), 104),
    (job("launch_failed", return_code=101), 101),  # the launcher's code passes through
    (job("failed", return_code=3), 3),
    (job("aborted"), 9),
    (job("lost"), 9),
])
def test_return_codes_pass_the_launchers_through(scripted, answer, code):
    scripted.script("POST", "/api/v1/jobs/", (201, answer))
    handle = FlareLauncherJobLauncher(url=scripted.url, site="site-1").launch_job({"job_id": "j1"},
                                                                                 {"job_process_args": JOB_ARGS})
    assert handle.poll() == code
    handle.wait()  # terminal already: no request
    assert scripted.count("GET", "/") == 0


def test_a_job_that_does_not_start_in_time_is_submitted_again_then_terminated(scripted):
    scripted.script("POST", "/api/v1/jobs/7/terminate/", (202, job("aborted", return_code=9)))
    scripted.script("POST", "/api/v1/jobs/", (201, job("queued")))
    # A server that answers the long poll at once (as one shutting down does): no hot loop.
    scripted.script("GET", "/api/v1/jobs/7/wait/", (200, job("queued")))
    launcher = FlareLauncherJobLauncher(url=scripted.url, site="site-1", timeout=1.2, resubmit_queued_after=0.4)
    handle = launcher.launch_job({"job_id": "j1"}, {"job_process_args": JOB_ARGS})
    assert handle.poll() == 9 and handle.job["state"] == "aborted"
    assert scripted.count("POST", "/api/v1/jobs/7/terminate/") == 1
    assert 2 <= scripted.count("POST", "/api/v1/jobs/") - 1 <= 4  # re-submitted while queued
    assert scripted.count("GET", "/api/v1/jobs/7/wait/") <= 8


def test_terminate_takes_nvflares_heartbeat_cleanup_argument(scripted):
    # NVFlare 2.9's client executor stops a job whose heartbeat was lost with terminate(heartbeat_cleanup=True).
    scripted.script("POST", "/api/v1/jobs/7/terminate/", (202, job("aborted", return_code=9)))
    handle = handle_for(client_for(scripted.url), job("running"))
    handle.terminate(heartbeat_cleanup=True)
    assert handle.poll() == 9 and scripted.count("POST", "/api/v1/jobs/7/terminate/") == 1
