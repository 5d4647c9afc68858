"""`Authorization: Token <secret>` for sites (the FL server) and users.

Failed attempts are counted per client address; over LAUNCHER_FAILED_TOKEN_LIMIT a minute, further
invalid tokens from that address get 429. The token is always checked first and a valid one always
passes: an attacker guessing from the FL server's address (or a shared proxy's) can never lock the
FL server out. The client address is REMOTE_ADDR, which uvicorn takes from X-Forwarded-For only
when the peer is one of LAUNCHER_TRUSTED_PROXIES (manage.py serve)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import authentication, exceptions

from jobs.services.throttle import FailureCounter
from jobs.services.tokens import token_authenticate

FAILED_WINDOW = 60  # seconds; the limit per window is settings.LAUNCHER_FAILED_TOKEN_LIMIT
failed_tokens = FailureCounter("failed-token", FAILED_WINDOW)


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
        token = token_authenticate(header[1])
        if token is None:
            address = request.META.get("REMOTE_ADDR", "")
            if failed_tokens.count(address) >= settings.LAUNCHER_FAILED_TOKEN_LIMIT:
                raise exceptions.Throttled(wait=failed_tokens.retry_after(address),
                                           detail="Too many failed token attempts; try again later.")
            failed_tokens.add(address)
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        principal = SitePrincipal(token.site) if token.site_id else token.user
        return principal, token

    def authenticate_header(self, request):
        return self.keyword

