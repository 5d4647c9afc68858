"""A prefork Celery worker on PostgreSQL keeps its connection pool between tasks: Celery's Django
fixup closed every connection *and the pool* around each task (celery#10554), so each launch paid
for a new pool (~35 ms, bench/launch_whole_path.py --phases). With CELERY_DB_REUSE_MAX the fixup
leaves them alone, and launcher_site.celery hands the connection back at each task boundary."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REUSE = ("import django; django.setup(); from celery.fixups.django import DjangoWorkerFixup; "
         "from launcher_site.celery import app; print(DjangoWorkerFixup(app).db_reuse_max)")
BACK_TO_POOL = """
import django; django.setup()
from celery.signals import task_postrun, task_prerun
from django.db import connection
import launcher_site.celery
for signal in (task_prerun, task_postrun):
    connection.ensure_connection()
    signal.send(sender=None)
    print(connection.connection is None)
"""


def run(code: str, tmp_path: Path, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    base.update(DJANGO_SETTINGS_MODULE="launcher_site.settings", LAUNCHER_VAR_DIR=str(tmp_path / "var"),
                SECRET_KEY="test-celery-db-pool", **env)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_on_postgresql_the_worker_fixup_no_longer_closes_the_pool_around_each_task(tmp_path):
    # No connection is made: the fixup reads the setting when the worker starts.
    assert run(REUSE, tmp_path, DATABASE_URL="postgres://u:p@127.0.0.1:5432/x") == ["1000"]


def test_on_sqlite_the_fixup_keeps_its_default(tmp_path):
    assert run(REUSE, tmp_path) == ["None"]


def test_each_task_boundary_hands_the_connection_back(tmp_path):
    # SQLite (CONN_MAX_AGE 0): "back" means closed; on PostgreSQL the same call returns it to the pool.
    assert run(BACK_TO_POOL, tmp_path) == ["True", "True"]
