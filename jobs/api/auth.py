"""`Authorization: Token <secret>` for sites (the FL server) and users. Failed attempts are
throttled per client address."""

from __future__ import annotations

from django.conf import settings
from django.core.cache import cache
from rest_framework import authentication, exceptions

from jobs.services.tokens import token_authenticate

FAILED_WINDOW = 60  # seconds; the limit per window is settings.LAUNCHER_FAILED_TOKEN_LIMIT


class SitePrincipal:
    """request.user for a site token: authenticated, but no user account and no staff rights."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False
    is_active = True
    pk = None

    def __init__(self, site):
        self.site = site

    def get_username(self) -> str:
        return f"site:{self.site.name}"

    def __str__(self) -> str:
        return self.get_username()


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0] != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Invalid token header: use 'Authorization: Token <token>'.")
        key = f"failed-token:{request.META.get('REMOTE_ADDR', '')}"
        if _failures(key) >= settings.LAUNCHER_FAILED_TOKEN_LIMIT:
            raise exceptions.Throttled(wait=FAILED_WINDOW, detail="Too many failed token attempts; try again later.")
        token = token_authenticate(header[1])
        if token is None:
            _count_failure(key)
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        principal = SitePrincipal(token.site) if token.site_id else token.user
        return principal, token

    def authenticate_header(self, request):
        return self.keyword


# The counter lives in the shared cache (Redis). With Redis down the API must keep answering the
# FL server, so the throttle then fails open: the token itself is still checked in the database.
def _failures(key: str) -> int:
    try:
        return cache.get(key, 0)
    except Exception:
        return 0


def _count_failure(key: str) -> None:
    try:
        cache.add(key, 0, FAILED_WINDOW)
        try:
            cache.incr(key)
        except ValueError:
            cache.set(key, 1, FAILED_WINDOW)
    except Exception:
        pass
