"""The whole output of a job is kept when it ends (jobs.services.job_logs): a real process-backend
job printing thousands of lines keeps all of them (the quick-view tail stays LAUNCHER_LOGS_TAIL_LINES),
a huge output is cut to LAUNCHER_LOGS_KEEP_BYTES keeping its start and its end, the full download has
the logs endpoint's access checks, and retention deletes it."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from backends.base import LABEL_SITE
from jobs.models import Job, JobEvent, JobLog, Role, Site, SiteMembership
from jobs.services.job_logs import HeadTail
from jobs.services.launching import job_launch
from jobs.services.retention import jobs_prune
from jobs.services.submission import split_credentials
from jobs.watchers import SiteWatcher
from tests.conftest import client_job_args, process_settings
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
MODULE = "chatty_job"
CHATTY = '''
import sys
options = dict(item.partition("=")[::2] for item in sys.argv[sys.argv.index("--set") + 1:])
count, width = int(options.get("lines", "10")), int(options.get("width", "0"))
for n in range(1, count + 1):
    level = "ERROR" if n % 1000 == 0 else "INFO"
    print(f"2026-12-06 21:00:00,000 - ClientRunner - {level} - line {n:06d}" + "x" * width)
print("Traceback (most recent call last):")
print("RuntimeError: the end")
'''


@pytest.fixture
def module_dir():
    path = Path(tempfile.mkdtemp(prefix="launcher-chatty-"))  # readable by the job user (not under tmp_path)
    path.chmod(0o755)
    (path / f"{MODULE}.py").write_text(CHATTY)
    (path / f"{MODULE}.py").chmod(0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def site(db, users, workspace, module_dir):
    site = Site.objects.create(name="site-1", backend="process", process=process_settings(
        workspace, allowed_modules=[MODULE], default_job_env={"PYTHONPATH": str(module_dir)}))
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    other = Site.objects.create(name="site-b", backend="process", process={"workspace": str(workspace)})
    SiteMembership.objects.create(site=other, user=users["outsider"], role=Role.ADMIN)
    return site


@contextlib.contextmanager
def watching(site):
    watcher = SiteWatcher(site.pk, site.name)
    watcher.start()
    try:
        wait_until(watcher.connected.is_set, timeout=20, message="the watcher to connect")
        yield watcher
    finally:
        watcher.stop.set()
        watcher.join(15)


def run_job(site, job_id: str, *options: str) -> Job:
    args = client_job_args(job_id)
    args["exe_module"] = ["-m", MODULE]
    stored, credentials = split_credentials(args)
    job = Job.objects.create(site=site, job_id=job_id, backend=site.backend, job_args=stored,
                             set_options=list(options))
    JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api", message="submitted")
    with watching(site):
        job_launch(job_pk=job.pk, credentials=credentials)
        wait_until(lambda: Job.objects.get(pk=job.pk).state == "succeeded", timeout=60, message="the job to end")
        wait_until(lambda: JobLog.objects.filter(job_id=job.pk).exists(), timeout=30,
                   message="the whole output to be kept")
        wait_until(lambda: Job.objects.get(pk=job.pk).logs_tail, timeout=30, message="the tail to be saved")
    job.refresh_from_db()
    return job


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_a_real_job_keeps_its_whole_output_downloadable_in_full_while_the_tail_stays_short(site, users):
    job = run_job(site, "chatty-1", "lines=5000")
    kept = JobLog.objects.get(job=job)
    lines = kept.text.splitlines()
    assert len(lines) == 5002 and kept.cut == 0
    assert lines[0].endswith("INFO - line 000001") and lines[4999].endswith("ERROR - line 005000")
    assert lines[-1] == "RuntimeError: the end"
    assert len(job.logs_tail.splitlines()) == 200  # the quick view is unchanged

    response = api(users["viewer"]).get(f"/api/v1/jobs/{job.pk}/logs/?full=1")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="site-1-chatty-1.log"'
    assert response["Content-Type"].startswith("text/plain")
    assert response.content.decode().splitlines() == lines
    tail = api(users["viewer"]).get(f"/api/v1/jobs/{job.pk}/logs/").json()
    assert len(tail["logs"].splitlines()) == 200  # without full=1: the tail, as before

    # another site's admin sees no such job; a bad flag is a 400 naming it
    assert api(users["outsider"]).get(f"/api/v1/jobs/{job.pk}/logs/?full=1").status_code == 404
    bad = api(users["viewer"]).get(f"/api/v1/jobs/{job.pk}/logs/?full=maybe")
    assert bad.status_code == 400 and "full" in bad.json().get("errors", bad.json()).__str__()


def test_a_huge_output_is_cut_to_the_byte_bound_keeping_its_start_and_its_end(site, settings):
    settings.LAUNCHER_LOGS_KEEP_BYTES = 64 * 1024
    job = run_job(site, "chatty-2", "lines=20000", "width=100")  # about 2.6 MB
    kept = JobLog.objects.get(job=job)
    assert len(kept.text.encode()) <= 64 * 1024 + 100
    assert kept.size > 2_500_000 and kept.cut > kept.size - 64 * 1024
    lines = kept.text.splitlines()
    assert lines[0].startswith("2026-12-06 21:00:00,000 - ClientRunner - INFO - line 000001x")
    assert lines[-1] == "RuntimeError: the end"
    assert lines[-3].startswith("2026-12-06 21:00:00,000 - ClientRunner - ERROR - line 020000x")
    marks = [line for line in lines if line.startswith("[... ") and "bytes cut" in line]
    assert marks == [f"[... {kept.cut} bytes cut: the start and the end of the output are kept ...]"]
    # whole lines on both sides of the mark
    assert all(line.startswith("2026-12-06") or line in marks or "Traceback" in line or "RuntimeError" in line
               for line in lines)


def test_the_head_and_tail_keeper_stays_bounded_on_a_long_stream():
    keeper = HeadTail(1000)
    chunk = b"".join(b"row %07d\n" % n for n in range(10_000))
    for _ in range(50):  # 6 MB through a 1000-byte keeper
        keeper.feed(chunk)
        assert len(keeper.head) + len(keeper.tail) <= 1000 + len(chunk)
    text, cut = keeper.result()
    assert text.startswith("row 0000000\n") and text.endswith("row 0009999\n")
    mark = [line for line in text.splitlines() if "bytes cut" in line]
    assert len(mark) == 1 and len(text.encode()) <= 1000 + 100
    assert cut == keeper.size - (len(text.encode()) - len(mark[0]) - 1) > 5_000_000


def test_retention_deletes_the_kept_output_of_old_jobs_only(site):
    old = Job.objects.create(site=site, job_id="old", backend="process", state="succeeded",
                             finished_at=timezone.now() - timedelta(days=100))
    new = Job.objects.create(site=site, job_id="new", backend="process", state="succeeded",
                             finished_at=timezone.now())
    JobLog.objects.create(job=old, text="old output", size=10)
    JobLog.objects.create(job=new, text="new output", size=10)
    report = jobs_prune(older_than_days=90)
    assert report.logs == 1 and report.jobs == 1
    assert list(JobLog.objects.values_list("job__job_id", flat=True)) == ["new"]
    assert Job.objects.filter(pk=old.pk).exists()  # the job row stays


@pytest.mark.docker
def test_a_docker_job_keeps_its_whole_output_read_as_a_bounded_stream(settings):
    """The Docker path: the container's output streamed through the keeper before removal."""
    from tests.live.conftest import docker_workspace, queued_job
    from tests.live.test_docker_watch import IMAGE
    from tests.util import docker_client_or_skip

    daemon = docker_client_or_skip(timeout=20)
    settings.LAUNCHER_LOG_FOLLOWERS = 0
    settings.LAUNCHER_LOGS_KEEP_BYTES = 300
    workspace = docker_workspace(Path(tempfile.mkdtemp(prefix="launcher-dk-")) / "ws")
    site = Site.objects.create(name="site-dk", backend="docker", docker={"workspace": str(workspace), "timeout": 10})
    try:
        job, credentials = queued_job(site, "dk-full")
        job.job_meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}}
        job.save(update_fields=["job_meta"])
        with watching(site):
            job_launch(job_pk=job.pk, credentials=credentials)
            wait_until(lambda: JobLog.objects.filter(job_id=job.pk).exists(), timeout=40,
                       message="the whole output to be kept")
        kept = JobLog.objects.get(job_id=job.pk)
        lines = kept.text.splitlines()
        assert lines[0].startswith("FAKE-PYTHON ARGV: ") and kept.cut > 0 and kept.size > 500, (kept.size, kept.text)
        assert len(kept.text.encode()) <= 300 + 100
        assert any("bytes cut: the start and the end" in line for line in lines)
        assert lines[-1].startswith("FAKE-PYTHON ENV: ")
        wait_until(lambda: not daemon.api.containers(all=True, filters={"label": f"{LABEL_SITE}=site-dk"}),
                   timeout=20, message="the container to be removed after its output was kept")
    finally:
        for container in daemon.containers.list(all=True, filters={"label": f"{LABEL_SITE}=site-dk"}):
            container.remove(force=True)
        shutil.rmtree(workspace.parent, ignore_errors=True)
