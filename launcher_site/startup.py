"""Start-up checks that turn an unreachable service into one line naming the variable."""

from __future__ import annotations

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
