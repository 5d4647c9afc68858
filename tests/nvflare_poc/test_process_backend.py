"""Real NVFlare jobs through FLARE Launcher on the process backend: server and both clients of every
job are launched by the dashboard. Each scenario checks NVFlare's own verdict (`nvflare job meta`)
and the dashboard's records."""

from __future__ import annotations

import pytest

from tests.nvflare_poc.checks import check_records, wait_running, wait_terminal
from tests.nvflare_poc.poc import JOBS, SITES, numpy_job
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.timeout(240)]


def test_hello_numpy_sag_completes_and_every_launched_job_succeeded(federation, records):
    poc = federation.poc
    job_id = poc.submit(JOBS / "hello-numpy-sag")
    try:
        assert poc.wait_finished(job_id) == "FINISHED:COMPLETED"
        jobs = wait_terminal(job_id)
        for site in SITES:
            check_records(jobs[site], state="succeeded", return_code=0, tokens=federation.tokens)
        assert [jobs[s].role for s in SITES] == ["server", "client", "client"]
        # The command is NVFlare's own, its `options` (--set ...) included, e.g. print_conf=True.
        for site in SITES:
            command = jobs[site].spec["command"]
            assert "print_conf=True" in command[command.index("--set"):], command
        assert "Round 2 finished." in jobs["server"].logs_tail and "Server runner finished." in jobs["server"].logs_tail
        assert all("END_RUN fired" in jobs[s].logs_tail for s in SITES[1:])
        # Beyond NVFlare: the training progress, read from the server job's own output.
        progress = federation.api_job(jobs["server"].pk)["progress"]
        assert progress is not None, "no training progress on the server job"
        assert {k: progress[k] for k in ("round", "total_rounds", "aggregation_round", "aggregated_updates",
                                         "finished")} == {"round": 2, "total_rounds": 3, "aggregation_round": 2,
                                                          "aggregated_updates": 2, "finished": True}, progress
        assert progress["last_aggregation_at"], progress
    finally:
        poc.abort_unfinished(job_id)


def test_nvflare_abort_of_a_running_job(federation, records, tmp_path):
    poc = federation.poc
    job_id = poc.submit(numpy_job(tmp_path, name="long-numpy", rounds=100, sleep_time=1))
    try:
        server_pk = wait_running(job_id)["server"].pk
        poc.wait_status(job_id, lambda s: s == "RUNNING", timeout=30, message="to run")
        # The progress while the job runs: rounds advance and the total is known.
        progress = wait_until(lambda: (lambda p: p if p and (p["round"] or 0) >= 2 else None)(
            federation.api_job(server_pk)["progress"]), timeout=60, interval=0.5, message="round 2 to start")
        assert progress["total_rounds"] == 100 and not progress["finished"], progress
        poc.abort(job_id)
        assert poc.wait_finished(job_id) == "FINISHED:ABORTED"
        jobs = wait_terminal(job_id)
        for site in SITES:  # NVFlare asked each job to stop, and each one did: none had to be killed
            job = jobs[site]
            assert job.state in ("succeeded", "aborted") and job.return_code in (0, 9), (site, job.state, job.detail)
            check_records(job, state=job.state, return_code=job.return_code, tokens=federation.tokens)
    finally:
        poc.abort_unfinished(job_id)


def test_a_job_that_ignores_the_abort_is_killed_with_9(federation, records):
    poc = federation.poc
    job_id = poc.submit(JOBS / "ignores-abort")
    try:
        wait_running(job_id)
        for site in SITES[1:]:  # both clients are inside the task that never ends
            marker = poc.real_dir(site) / job_id / "stubborn.started"
            wait_until(marker.exists, timeout=60, interval=0.2, message=f"{site}'s stubborn task to start")
        poc.abort(job_id)
        assert poc.wait_finished(job_id, timeout=120) == "FINISHED:ABORTED"
        jobs = wait_terminal(job_id, timeout=60)
        for site in SITES[1:]:
            check_records(jobs[site], state="aborted", return_code=9, tokens=federation.tokens)
        assert jobs["server"].state in ("succeeded", "aborted"), jobs["server"].detail
    finally:
        poc.abort_unfinished(job_id)


def test_two_jobs_at_once_both_complete(federation, records, tmp_path):
    poc = federation.poc
    first = poc.submit(numpy_job(tmp_path, name="numpy-a", rounds=3))
    second = poc.submit(numpy_job(tmp_path, name="numpy-b", rounds=3))
    try:
        wait_until(lambda: _overlap(first, second), timeout=60, interval=0.2, message="both jobs to run at once")
        for job_id in (first, second):
            assert poc.wait_finished(job_id) == "FINISHED:COMPLETED"
            jobs = wait_terminal(job_id)
            for site in SITES:
                check_records(jobs[site], state="succeeded", return_code=0, tokens=federation.tokens)
    finally:
        poc.abort_unfinished(first, second)


def _overlap(first: str, second: str) -> bool:
    from jobs.models import Job

    return Job.objects.filter(job_id__in=[first, second], state="running").values("job_id").distinct().count() == 2


def test_no_site_token_in_any_file_a_job_can_read(federation):
    """The parents get their tokens from their environment: nothing under startup/ or local/ (which
    job processes read and Docker job containers mount) holds one, not even the launcher's config."""
    poc = federation.poc
    for site in SITES:
        config = (poc.real_dir(site) / "local" / "flare_launcher__p_resources.json").read_text()
        assert '"token_env"' in config, config
        for folder in ("startup", "local"):
            for path in (poc.real_dir(site) / folder).rglob("*"):
                if path.is_file():
                    text = path.read_text(errors="replace")
                    assert not any(token in text for token in federation.tokens.values()), path
