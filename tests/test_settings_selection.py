"""Settings follow the environment: SQLite vs PostgreSQL, in-process vs Redis, and a bad value
stops start-up with one line naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOW = ("from django.conf import settings as s; import django; django.setup(); "
        "print(s.DATABASES['default']['ENGINE']); print(s.CHANNEL_LAYERS['default']['BACKEND']); "
        "print(s.CELERY_BROKER_URL.split('://')[0]); print(s.DEBUG)")


def run(code_or_args, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "PORT")}
    base.update(DJANGO_SETTINGS_MODULE="launcher_site.settings", LAUNCHER_VAR_DIR=str(tmp_path / "var"), **env)
    args = [sys.executable, "-c", code_or_args] if isinstance(code_or_args, str) else [sys.executable, *code_or_args]
    return subprocess.run(args, cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)


def test_embedded_default_is_sqlite_in_process_and_debug_off(tmp_path):
    out = run(SHOW, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["django.db.backends.sqlite3", "channels.layers.InMemoryChannelLayer", "memory", "False"]
    assert (tmp_path / "var" / "launcher.sqlite3").parent.is_dir()


def test_secret_key_is_generated_once_and_kept(tmp_path):
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    first, second = run(code, tmp_path).stdout.strip(), run(code, tmp_path).stdout.strip()
    assert first and first == second
    assert (tmp_path / "var" / "secret_key").read_text().strip() == first


def test_database_url_and_redis_url_switch_to_postgres_and_redis(tmp_path):
    out = run(SHOW, tmp_path, DATABASE_URL="postgres://u:p@127.0.0.1:5432/x", REDIS_URL="redis://127.0.0.1:6379/0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["django.db.backends.postgresql", "channels_redis.pubsub.RedisPubSubChannelLayer",
                                  "redis", "False"]


@pytest.mark.parametrize("env, expected", [
    ({"DATABASE_URL": "mysql//nonsense"}, "DATABASE_URL"),
    ({"PORT": "eighty"}, "PORT: expected an integer"),
    ({"DEBUG": "maybe"}, "DEBUG: expected true/false"),
    ({"REDIS_URL": "http://x"}, "REDIS_URL"),
])
def test_malformed_values_stop_startup_with_one_line_naming_the_variable(tmp_path, env, expected):
    out = run(["manage.py", "check"], tmp_path, **env)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: ") and expected in lines[0]


def test_unreachable_redis_stops_serve_naming_redis_url(tmp_path):
    run(["manage.py", "migrate", "--noinput"], tmp_path)
    out = run(["manage.py", "serve", "--port", "0"], tmp_path, REDIS_URL="redis://127.0.0.1:1/0")
    assert out.returncode != 0
    assert out.stderr.strip().splitlines() == [line for line in out.stderr.strip().splitlines()
                                               if line.startswith("configuration error: REDIS_URL: cannot reach Redis")]


def test_websocket_heartbeat_default_is_under_25_seconds():
    from django.conf import settings

    assert 0 < settings.LAUNCHER_WS_HEARTBEAT_SECONDS <= 25  # proxies cut sockets idle for ~30-60 s


def test_createsuperuser_noinput_works_as_django_documents(tmp_path):
    assert run(["manage.py", "migrate", "--noinput"], tmp_path).returncode == 0
    made = run(["manage.py", "createsuperuser", "--noinput", "--username", "ops", "--email", "ops@example.org"],
               tmp_path, DJANGO_SUPERUSER_PASSWORD="a-long-pass-phrase")
    assert made.returncode == 0, made.stderr
    check = run(["manage.py", "shell", "-c", "from django.contrib.auth import authenticate; "
                 "print(authenticate(username='ops', password='a-long-pass-phrase').is_superuser)"], tmp_path)
    assert check.stdout.strip().splitlines()[-1] == "True"
