"""API tokens: random secrets shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import timedelta

from django.utils import timezone

from jobs.models import ApiToken

TOKEN_PREFIX = "flr_"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # avoid a write on every request
# How long a process trusts a token it found valid without looking again: a revoked token (or a
# deactivated user's) still works this long in the other web processes.
TOKEN_TRUST_SECONDS = 2.0


def token_hash(secret: str) -> str:
    # The secret has 256 bits of entropy, so a plain SHA-256 is enough (no slow KDF needed).
    return hashlib.sha256(secret.encode()).hexdigest()


def token_create(*, site=None, user=None, name: str = "", created_by=None) -> tuple[ApiToken, str]:
    """Create a token for exactly one of `site` or `user`; return it with its secret (never stored)."""
    if (site is None) == (user is None):
        raise ValueError("a token belongs to exactly one site or one user")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(site=site, user=user, name=name, prefix=secret[:12],
                                    key_hash=token_hash(secret), created_by=created_by)
    return token, secret


def token_authenticate(secret: str) -> ApiToken | None:
    key_hash = token_hash(secret)
    token = _recently_checked.get(key_hash)
    if token is None:
        token = (ApiToken.objects.select_related("site", "user")
                 .filter(key_hash=key_hash, revoked_at__isnull=True).first())
        if token is None or (token.user is not None and not token.user.is_active):
            return None
        _recently_checked.put(key_hash, token)
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    _recently_checked.forget(token.key_hash)  # at once here; other processes within TOKEN_TRUST_SECONDS
    return token


class _RecentlyChecked:
    """Tokens this process found valid in the last TOKEN_TRUST_SECONDS, by key hash. The FL server
    calls many times a second with one token, and looking it up (token, site, user) was a tenth of
    the CPU of a job submit. Only valid tokens are kept: a wrong one is looked up every time."""

    def __init__(self, max_size: int = 1000):
        self.max_size = max_size
        self.lock = threading.Lock()
        self.entries: dict[str, tuple[float, ApiToken]] = {}

    def get(self, key_hash: str) -> ApiToken | None:
        with self.lock:
            entry = self.entries.get(key_hash)
        if entry is None or time.monotonic() - entry[0] > TOKEN_TRUST_SECONDS:
            return None
        return entry[1]

    def put(self, key_hash: str, token: ApiToken) -> None:
        with self.lock:
            if len(self.entries) >= self.max_size:
                self.entries.clear()
            self.entries[key_hash] = (time.monotonic(), token)

    def forget(self, key_hash: str) -> None:
        with self.lock:
            self.entries.pop(key_hash, None)


_recently_checked = _RecentlyChecked()
