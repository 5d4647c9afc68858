"""FLARE Launcher going away under a real NVFlare federation: stopped with Ctrl-C or `kill -9` while
a job runs, or down when NVFlare launches one. Each time it comes back on the same port and the
NVFlare job must complete: the parents keep waiting (and retrying) and the job processes, which run
in their own sessions, never noticed."""

from __future__ import annotations

import pytest

from tests.nvflare_poc.checks import check_records, wait_running, wait_terminal
from tests.nvflare_poc.poc import SITES, numpy_job
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.timeout(240)]


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_dashboard_stopped_mid_job_and_started_again_the_job_completes(federation, records, tmp_path, how):
    poc, dashboard = federation.poc, federation.dashboard
    job_id = poc.submit(numpy_job(tmp_path, name=f"restart-{how}", rounds=5, sleep_time=1))
    try:
        wait_running(job_id)
        poc.wait_status(job_id, lambda s: s == "RUNNING", timeout=30, message="to run")
        seen = {site: len(poc.log(site)) for site in SITES}
        if how == "ctrl-c":
            dashboard.interrupt()
        else:
            dashboard.kill()
        dashboard.start()
        assert poc.wait_finished(job_id, timeout=120) == "FINISHED:COMPLETED", dashboard.output()
        jobs = wait_terminal(job_id)
        for site in SITES:
            check_records(jobs[site], state="succeeded", return_code=0, tokens=federation.tokens)
            # Going away never answered a waiting parent with an error (a 500 ended NVFlare's wait).
            said = [line for line in poc.log(site)[seen[site]:].splitlines() if "flare_launcher_client" in line]
            assert not [line for line in said if " 500" in line or "ERROR" in line], said
    finally:
        poc.abort_unfinished(job_id)
        if dashboard.proc is None or dashboard.proc.poll() is not None:
            dashboard.start()


def test_dashboard_down_at_launch_time_the_job_runs_once_it_is_up(federation, records, tmp_path):
    poc, dashboard = federation.poc, federation.dashboard
    dashboard.interrupt()
    seen = len(poc.log("server"))
    job_id = None
    try:
        job_id = poc.submit(numpy_job(tmp_path, name="launcher-down", rounds=2))
        # The server parent is trying to launch the job's server process and cannot reach FLARE Launcher.
        warning = wait_until(lambda: [line for line in poc.log("server")[seen:].splitlines()
                                      if "flare_launcher_client - WARNING" in line], timeout=60, interval=0.2,
                             message="the server parent to retry its launch")
        assert dashboard.url in warning[0], warning  # the parent's log says which launcher it cannot reach
        dashboard.start()
        assert poc.wait_finished(job_id, timeout=120) == "FINISHED:COMPLETED", poc.log("server")[seen:][-3000:]
        jobs = wait_terminal(job_id)
        for site in SITES:
            check_records(jobs[site], state="succeeded", return_code=0, tokens=federation.tokens)
    finally:
        if dashboard.proc is None or dashboard.proc.poll() is not None:
            dashboard.start()
        if job_id:
            poc.abort_unfinished(job_id)
