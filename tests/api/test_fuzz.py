"""Schemathesis over the whole API, from the schema the server serves: no input may crash a request
(no 5xx), every status, content type and body must be one the schema declares, and whatever the
schema calls invalid must be refused. Runs in `make test`'s main phase (PostgreSQL + Redis); a
finding fails the build, with schemathesis's report (and a curl line to reproduce it) in the output.

The server is a real `manage.py serve` on a loopback port, on the test database, in Redis mode with
no worker, beat or watchers (a throwaway redis-server): jobs the fuzz launches are recorded and stay
queued, so nothing ever runs. Its network is fenced to loopback (tests/api/netguard): sites the fuzz
creates may name any docker_host or kubeconfig, and their connection checks then fail at once
instead of reaching out. Long polls are held at most 2 s (LAUNCHER_WAIT_HOLD_SECONDS): a fuzzed
`timeout` of up to 60 s is answered then. Two runs, each with a fixed seed and a time budget: as a
site token, then as staff (whose run may delete the seeded site)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.models import Job, JobEvent, Role, Site, SiteMembership
from jobs.services import catalog
from jobs.services.tokens import token_create
from tests.api.live import LiveServer
from tests.conftest import process_settings

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(420)]

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "negative_data_rejection")
PHASES = ("examples", "coverage", "fuzzing", "stateful")
SEED = int(os.environ.get("LAUNCHER_FUZZ_SEED", "14"))
BUDGET_SECONDS = int(os.environ.get("LAUNCHER_FUZZ_SECONDS", "45"))  # per run; two runs
NETGUARD = Path(__file__).parent / "netguard"


def schemathesis() -> str:
    found = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("schemathesis is not installed: `make test` installs requirements-dev.txt")
    return found


@pytest.fixture
def fuzz_redis(tmp_path):
    from tests.live.conftest import RedisServer

    if shutil.which("redis-server") is None:
        if os.environ.get("LAUNCHER_REQUIRE_SERVICES") == "1":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def seeded(users, workspace, data_root):
    """A process site with a study, a dataset, finished jobs with logs and timelines, and tokens for
    staff and for the site."""
    site = Site.objects.create(name="site-1", backend="process", process=process_settings(workspace),
                               allowed_data_roots=[str(data_root)])
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    study = catalog.study_create(site=site, name="cohort-a", description="fuzzed")
    catalog.dataset_create(study=study, name="ct-scans", source=str(data_root / "cohort-a"))
    for n, state in enumerate(("succeeded", "failed", "aborted"), start=1):
        job = Job.objects.create(site=site, job_id=f"job-{n}", backend="process", state=state, study="cohort-a",
                                 return_code=0 if state == "succeeded" else 1, logs_tail="line 1\nline 2\n",
                                 job_meta={"job_id": f"job-{n}", "study": "cohort-a"})
        JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api", message="submitted")
        JobEvent.objects.create(job=job, from_state="queued", to_state=state, source="worker", message="done")
    _, staff_secret = token_create(user=users["staff"], name="fuzz")
    _, site_secret = token_create(site=site, name="fuzz")
    return {"site": site_secret, "staff": staff_secret}


def fenced_pythonpath() -> str:
    """PYTHONPATH that loads tests/api/netguard into a Python process; checked to work."""
    pythonpath = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
    probe = ("import socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=5)\n"
             "except OSError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": pythonpath},
                          capture_output=True, text=True, timeout=60)
    assert "fuzz network guard" in done.stdout, done.stdout + done.stderr
    return pythonpath


@pytest.fixture
def fuzz_server(seeded, fuzz_redis, tmp_path):
    server = LiveServer(tmp_path, env_overrides={
        "REDIS_URL": fuzz_redis.url,  # Redis mode: no embedded worker or beat, so nothing is launched
        "LAUNCHER_RUN_WATCHERS": "false",
        "LAUNCHER_WAIT_HOLD_SECONDS": "2",
        "LAUNCHER_CHECK_DEADLINE_SECONDS": "2",
        "PYTHONPATH": fenced_pythonpath(),
    })
    try:
        yield server
    finally:
        server.stop()


def run_schemathesis(server: LiveServer, token: str, report: Path) -> subprocess.CompletedProcess:
    command = [
        schemathesis(), "run", f"{server.url}/api/schema/?format=json",
        "--header", f"Authorization: Token {token}",
        "--checks", ",".join(CHECKS), "--phases", ",".join(PHASES),
        # One worker: the server is one process anyway, and with threads hypothesis can trip CPython
        # 3.11's "AST constructor recursion depth mismatch" (ast.parse racing in two threads).
        "--seed", str(SEED), "--max-time", str(BUDGET_SECONDS), "--workers", "1",
        "--request-timeout", "20", "--generation-database", "none",
        "--generation-with-security-parameters", "false", "--suppress-health-check", "all",
        "--no-color", "--report", "junit", "--report-junit-path", str(report),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=BUDGET_SECONDS + 240,
                          env={**os.environ, "SCHEMATHESIS_HOOKS": ""}, cwd=report.parent)


def test_schemathesis_finds_nothing_as_a_site_token_and_as_staff(fuzz_server, seeded, tmp_path):
    started = time.monotonic()
    for who in ("site", "staff"):  # staff last: its run may rename or delete the seeded site
        done = run_schemathesis(fuzz_server, seeded[who], tmp_path / f"schemathesis-{who}.xml")
        report = f"{done.stdout[-20000:]}\n{done.stderr[-3000:]}\n--- server ---\n{fuzz_server.output()}"
        assert done.returncode == 0, f"schemathesis as {who} (exit {done.returncode}):\n{report}"
        print(f"\n--- schemathesis as {who} ---\n{done.stdout[-1500:]}")
    assert "Traceback" not in fuzz_server.output(), fuzz_server.output()
    print(f"fuzz: {time.monotonic() - started:.0f} s")
