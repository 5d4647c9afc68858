"""Shared fixtures: users with each role, a process-backend site with its own workspace, job args
as an NVFlare client parent sends them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


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
    ws = tmp_path / "workspace"
    (ws / "startup").mkdir(parents=True)
    (ws / "local").mkdir()
    return ws


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
        process={"workspace": str(workspace), "default_python_path": sys.executable,
                 "default_job_env": {"PYTHONPATH": str(FIXTURES), "SITE_DEFAULT": "yes"}},
        allowed_data_roots=[str(data_root)],
    )
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    SiteMembership.objects.create(site=site, user=users["operator"], role=Role.OPERATOR)
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    return site


def client_job_args(job_id: str, *, token: str = "tok-SECRET-123", workspace: str = "/ws") -> dict:
    """JOB_PROCESS_ARGS as NVFlare's client parent builds them (name -> [flag, value])."""
    return {
        "exe_module": ["-m", "fake_nvflare_job"],
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
