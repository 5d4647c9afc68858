"""One real NVFlare POC federation and one FLARE Launcher for the whole package (started once, ~6 s).

The dashboard shares the pytest-django test database, so the rows it needs (a staff user, the three
process sites created through the catalog services as staff would, one token per site) are created
here with the database unblocked, outside any test transaction, and flushed when the package ends.
Tests read the dashboard's records the same way (`records`), never through a test transaction.

Runs once per `make test`: in the embedded phase (SQLite, the dashboard as `make run` starts it).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.api.live import free_port
from tests.nvflare_poc.dashboard import Dashboard
from tests.nvflare_poc.poc import SITES, Poc


@dataclass
class Federation:
    poc: Poc
    dashboard: Dashboard
    tokens: dict[str, str]
    staff_pk: int
    staff_token: str
    base: Path

    def api_job(self, pk: int) -> dict:
        """GET /api/v1/jobs/{pk}/ as staff: what the API shows of a job."""
        response = requests.get(f"{self.dashboard.url}/api/v1/jobs/{pk}/", timeout=10,
                                headers={"Authorization": f"Token {self.staff_token}"})
        assert response.status_code == 200, response.text[:500]
        return response.json()


def process_settings(workspace: Path) -> dict:
    """Jobs run as root here (the tests run as root and the POC workspace is root's): a staff-only
    choice, `allow_root`, as the process backend requires."""
    return {"workspace": str(workspace), "default_python_path": sys.executable, "allow_root": True}


@pytest.fixture(scope="package")
def federation(django_db_setup, django_db_blocker):
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import setup_databases, teardown_databases

    from jobs.services.catalog import site_create
    from jobs.services.tokens import token_create

    if not connection.settings_dict["ENGINE"].endswith("sqlite3"):
        pytest.skip("the real-NVFlare POC tests run once, in the embedded (SQLite) phase of `make test`")
    own_db = None
    with django_db_blocker.unblock():
        if "auth_user" not in connection.introspection.table_names():
            # pytest-django sets up the test database only for sessions with django_db-marked tests.
            own_db = setup_databases(verbosity=0, interactive=False, aliases={"default"})
    base = Path(tempfile.mkdtemp(prefix="nvflare-poc-"))
    poc = Poc(base)
    dashboard = Dashboard(base / "dashboard", free_port())
    try:
        poc.prepare()
        poc.link_docker_workspace()
        with django_db_blocker.unblock():
            staff = get_user_model().objects.create_user("poc-staff", password="pw-poc-staff-1", is_staff=True)
            tokens = {}
            for name in SITES:
                site = site_create(name=name, backend="process", actor=staff,
                                   process=process_settings(poc.real_dir(name)))
                tokens[name] = token_create(site=site, name="nvflare parent", created_by=staff)[1]
            staff_token = token_create(user=staff, name="poc tests", created_by=staff)[1]
        poc.use_flare_launcher(dashboard.url, tokens)
        dashboard.start()
        poc.start()
        yield Federation(poc=poc, dashboard=dashboard, tokens=tokens, staff_pk=staff.pk, staff_token=staff_token,
                         base=base)
    finally:
        poc.stop()
        dashboard.stop()
        poc.unlink_docker_workspace()
        keep = os.environ.get("LAUNCHER_TEST_OUTPUT")
        if keep:  # the parents' and the dashboard's logs, for a failed run
            _save_logs(poc, dashboard, Path(keep) / "nvflare_poc")
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
            if own_db is not None:
                teardown_databases(own_db, verbosity=0)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def records(django_db_blocker):
    """Read access to the dashboard's rows (no test transaction: the dashboard writes them)."""
    with django_db_blocker.unblock():
        yield


def _save_logs(poc: Poc, dashboard: Dashboard, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for site in SITES:
        for name in ("log.txt", "poc_console.log"):
            source = poc.real_dir(site) / name
            if source.exists():
                shutil.copy(source, dest / f"{site}-{name}")
    if dashboard.log_path.exists():
        shutil.copy(dashboard.log_path, dest / "dashboard.log")
