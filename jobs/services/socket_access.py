"""Whether an open websocket may go on receiving a site's jobs: checked at connect and on every
heartbeat (jobs.consumers), so a socket stops within a heartbeat of its user signing out (session
gone or expired), being deactivated, changing password, or losing access to the site."""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth

from jobs import selectors
from jobs.models import Site

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def socket_access(*, session_key: str | None, user_pk, site_pk: int) -> int | None:
    """None while the session still signs in the same active user who may view the site; else the
    close code (4401: not signed in any more, 4403: may not see the site any more)."""
    if not session_key:
        return CLOSE_UNAUTHENTICATED
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    # As for every HTTP request: the session must exist and not be expired, its user active, and
    # its auth hash still match the user's password.
    user = auth.get_user(SimpleNamespace(session=session))
    if not user.is_authenticated or user.pk != user_pk:
        return CLOSE_UNAUTHENTICATED
    site = Site.objects.filter(pk=site_pk).first()
    if site is None or not selectors.user_may(user, site, "viewer"):
        return CLOSE_FORBIDDEN
    return None
