"""API tokens: random secrets shown once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.core.cache import caches
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
    # The FL server calls many times a second with one token, and looking it up (token, site,
    # user) was a tenth of the CPU of a job submit. Only valid tokens are kept.
    key_hash = token_hash(secret)
    token = caches["tokens"].get(key_hash)
    if token is None:
        token = (ApiToken.objects.select_related("site", "user")
                 .filter(key_hash=key_hash, revoked_at__isnull=True).first())
        if token is None or (token.user is not None and not token.user.is_active):
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        caches["tokens"].set(key_hash, token, TOKEN_TRUST_SECONDS)
    return token


def token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    caches["tokens"].delete(token.key_hash)  # at once here; other processes within TOKEN_TRUST_SECONDS
    return token

