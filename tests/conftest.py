"""Shared fixtures: users with each role, a process-backend site with its own workspace, job args
as an NVFlare client parent sends them.

Process-backend jobs run as an unprivileged uid (JOB_UID, `nobody`) when the tests run as root, as a
site should configure it; their workspace is therefore outside pytest's 0700 tmp tree."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
JOB_UID = JOB_GID = 65534  # nobody
FAKE_MODULE = "fake_nvflare_job"  # tests/fixtures/fake_nvflare_job.py, allowed by the test sites


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _no_late_error_counts()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    _no_late_error_counts()
    return (yield)


def _no_late_error_counts() -> None:
    # An error counted by a watcher near a test's end is written by a timer up to 5 s later: never
    # into the next test's database, nor during the TRUNCATE that empties it (a PostgreSQL deadlock).
    from jobs.services.runtime_facts import discard_unwritten_errors

    discard_unwritten_errors()


@functools.cache
def job_runtime() -> dict:
    """Process settings that make test jobs run unprivileged: as JOB_UID with a python that uid can
    run (the venv's python may live under a 0700 home). Not root: jobs run as ourselves. When no
    python works for JOB_UID, jobs run as root (`allow_root`) and `unprivileged` is False."""
    if os.geteuid() != 0:
        return {"settings": {"default_python_path": sys.executable, "user": f"{os.geteuid()}:{os.getegid()}"},
                "python": sys.executable, "unprivileged": False}
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('fake_nvflare_job') is None)"
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            ok = subprocess.run([python, "-c", probe], env={"PYTHONPATH": str(FIXTURES)}, cwd="/", timeout=30,
                                user=JOB_UID, group=JOB_GID, extra_groups=[], capture_output=True).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return {"settings": {"default_python_path": python, "user": f"{JOB_UID}:{JOB_GID}"},
                    "python": python, "unprivileged": True}
    return {"settings": {"default_python_path": sys.executable, "allow_root": True},
            "python": sys.executable, "unprivileged": False}


def process_settings(workspace, **extra) -> dict:
    """A process site's settings for tests: the fake job module allowed, jobs unprivileged."""
    return {"workspace": str(workspace), **job_runtime()["settings"], "allowed_modules": [FAKE_MODULE],
            "default_job_env": {"PYTHONPATH": str(FIXTURES), "SITE_DEFAULT": "yes"}, **extra}


@pytest.fixture
def users(db, django_user_model):
    """owner (site admin), operator, viewer, outsider and staff."""
    make = django_user_model.objects.create_user
    return {
        "owner": make("owner", password="pw-owner-123"),
        "operator": make("operator", password="pw-operator-123"),
        "viewer": make("viewer", password="pw-viewer-123"),
        "outsider": make("outsider", password="pw-outsider-123"),
        "staff": make("staff", password="pw-staff-123", is_staff=True),
    }


@pytest.fixture
def workspace(tmp_path) -> Path:
    """Root-owned (0755) like a real site's; jobs get their own directory in it, owned by the job user.
    Not under tmp_path: pytest keeps its tmp root 0700, which another uid cannot enter."""
    ws = Path(tempfile.mkdtemp(prefix="launcher-ws-"))
    ws.chmod(0o755)
    (ws / "startup").mkdir()
    (ws / "local").mkdir()
    yield ws
    shutil.rmtree(ws, ignore_errors=True)


@pytest.fixture
def data_root(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "cohort-a").mkdir(parents=True)
    return root


@pytest.fixture
def process_site(db, users, workspace, data_root):
    from jobs.models import Role, Site, SiteMembership

    site = Site.objects.create(
        name="site-1",
        backend="process",
        process=process_settings(workspace),
        allowed_data_roots=[str(data_root)],
    )
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    SiteMembership.objects.create(site=site, user=users["operator"], role=Role.OPERATOR)
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    return site


def client_job_args(job_id: str, *, token: str = "tok-SECRET-123", workspace: str = "/ws") -> dict:
    """JOB_PROCESS_ARGS as NVFlare's client parent builds them (name -> [flag, value])."""
    return {
        "exe_module": ["-m", FAKE_MODULE],
        "workspace": ["-m", workspace],
        "startup_dir": ["-w", os.path.join(workspace, "startup")],
        "job_id": ["-n", job_id],
        "client_name": ["-c", "site-1"],
        "parent_url": ["-p", "tcp://localhost:8004"],
        "parent_conn_sec": ["--parent_conn_sec", "clear"],
        "scheme": ["-scheme", "tcp"],
        "startup_config_file": ["-s", "fed_client.json"],
        "auth_token": ["-t", token],
        "auth_signature": ["-ts", "sig-SECRET-456"],
        "ssid": ["-d", "ssid-SECRET-789"],
    }


@pytest.fixture
def job_args():
    return client_job_args
