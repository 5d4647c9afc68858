"""Start-up checks that turn an unreachable service into one line naming the variable."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.utils import OperationalError


def require_services() -> None:
    try:
        connection.ensure_connection()
    except OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImproperlyConfigured(f"DATABASE_URL: cannot connect to the database: {first_line}") from None
    if settings.REDIS_URL:
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3, socket_timeout=3).ping()
        except redis.RedisError as exc:
            raise ImproperlyConfigured(f"REDIS_URL: cannot reach Redis: {exc}") from None


_protected: set[str] = set()


def protect_database_files(sender=None, connection=None, **kwargs) -> None:
    """connection_created handler: the embedded SQLite database, its -wal/-shm files and the var/
    directory are the launcher's alone (0600/0700): they hold session keys and token hashes, and a
    job or another local user must not read them. SQLite creates -wal/-shm with the database
    file's mode, so later ones stay 0600 too, and checking once per process is enough."""
    if connection is None or connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:") or name in _protected:
        return  # once per database and process: SQLite connects per thread, often per request
    _protected.add(name)
    for path in (name, f"{name}-wal", f"{name}-shm", f"{name}-journal"):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
                os.chmod(path, 0o600)
    for path, mode in ((Path(settings.VAR_DIR), 0o700), (Path(settings.VAR_DIR) / "secret_key", 0o600)):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if Path(name).resolve().is_relative_to(path.resolve()) or path.name == "secret_key":
                if stat.S_IMODE(path.stat().st_mode) & 0o077:
                    path.chmod(mode)
