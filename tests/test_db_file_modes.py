"""The embedded SQLite database, its -wal/-shm files and var/ are the launcher's alone: a job or
another local user must not read session keys or token hashes from them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(connection.vendor != "sqlite", reason="the embedded database only")
def test_the_database_and_its_wal_and_shm_files_are_0600_and_var_0700(tmp_path):
    old = os.umask(0o022)  # the usual umask: files 0644 unless we say otherwise
    try:
        from django.db.backends.sqlite3.base import DatabaseWrapper

        db = tmp_path / "var" / "launcher.sqlite3"
        db.parent.mkdir()
        wrapper = DatabaseWrapper({**settings.DATABASES["default"], "NAME": str(db)}, alias="modes-test")
        wrapper.ensure_connection()
        with wrapper.cursor() as cursor:
            cursor.execute("CREATE TABLE t (x text)")
            cursor.execute("INSERT INTO t VALUES ('session key')")
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(p.exists() for p in files)
        assert {str(p): mode(p) for p in files} == {str(p): 0o600 for p in files}
        wrapper.close()
    finally:
        os.umask(old)

    name = connection.settings_dict["NAME"]  # the running (test) database, under LAUNCHER_VAR_DIR
    connection.ensure_connection()
    assert mode(name) == 0o600
    assert mode(settings.VAR_DIR) == 0o700
    secret = Path(settings.VAR_DIR) / "secret_key"
    if secret.exists():
        assert mode(secret) == 0o600
