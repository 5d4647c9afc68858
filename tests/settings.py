"""Test settings: the real settings module, driven by the environment `make test` sets, plus
throwaway paths and a fast password hasher."""

import os
import secrets
import tempfile

os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(40))
os.environ.setdefault("LAUNCHER_VAR_DIR", tempfile.mkdtemp(prefix="launcher-test-var-"))

from launcher_site.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not :memory:, so that worker and watcher threads see the same database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}  # noqa: F405
LAUNCHER_RUN_WATCHERS = False
