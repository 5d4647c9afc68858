"""The websocket handshake's Origin check: the exact origin the dashboard was served from.

Browsers send the session cookie with any page's websocket, so the Origin is what stops another
site (or another port or scheme on the same host: a different origin to the browser) from reading
the jobs of whoever visits it. Channels' AllowedHostsOriginValidator compares only the host name.

Allowed: an Origin equal in scheme, host and port to this request's own (Host header, which must be
in ALLOWED_HOSTS; ws -> http, wss -> https, honouring SECURE_PROXY_SSL_HEADER as Django's CSRF check
does; default ports normalised), or one of LAUNCHER_CSRF_TRUSTED_ORIGINS (`https://*.example.org`
wildcards as Django's). No Origin, or "null", is refused: every browser sends one, and no
non-browser client has a websocket to use (sockets authenticate with the session only).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, or None if it is not one."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.username:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _request_scheme(scope, headers: dict[bytes, bytes]) -> str:
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    if settings.SECURE_PROXY_SSL_HEADER:  # as django.http.HttpRequest.is_secure
        header, secure_value = settings.SECURE_PROXY_SSL_HEADER
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode()
        if name in headers:
            value = headers[name].decode("latin-1").split(",", 1)[0].strip()
            scheme = "https" if value == secure_value else "http"
    return scheme


def _allowed_hosts() -> list[str]:
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:  # as django.http.HttpRequest.get_host
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return allowed


def origin_allowed(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    host = headers.get(b"host", b"").decode("latin-1").strip()
    if not origin or origin == "null" or not host:
        return False
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return False
    got = _origin_tuple(origin)
    if got is None:
        return False
    if got == _origin_tuple(f"{_request_scheme(scope, headers)}://{host}"):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        if "*" in trusted:
            parts = urlsplit(trusted)
            netloc = origin.split("://", 1)[-1].lower()
            if parts.scheme.lower() == got[0] and is_same_domain(netloc, parts.netloc.lstrip("*").lower()):
                return True
        elif got == _origin_tuple(trusted):
            return True
    return False


class SameOriginValidator:
    """ASGI middleware: refuses (403 at the handshake) a websocket whose Origin is not allowed."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
