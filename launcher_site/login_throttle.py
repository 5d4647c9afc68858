"""Sign-in throttling for the dashboard login and the Django admin login.

Every failed sign-in (Django's `user_login_failed` signal) is counted per username and per client
address in the shared cache. Once either reaches LAUNCHER_LOGIN_FAILURE_LIMIT within
LOGIN_FAILURE_WINDOW, a sign-in for that username or from that address is refused until the window
ends: the form says so and the answer is 429, without the password being checked, so a right
password during the lockout is refused too (otherwise the lockout would still confirm guesses).
A successful sign-in clears its username's count, not its address's.
"""

from __future__ import annotations

import math
from functools import wraps

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import ValidationError
from django.dispatch import receiver

from jobs.services.throttle import FailureCounter

LOGIN_FAILURE_WINDOW = 300  # seconds
by_username = FailureCounter("failed-login-user", LOGIN_FAILURE_WINDOW)
by_address = FailureCounter("failed-login-addr", LOGIN_FAILURE_WINDOW)


def _username(value) -> str:
    return str(value or "").strip().lower()  # "Alice" and "alice" share a count


def _address(request) -> str:
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


def lockout_seconds(request, username: str) -> int:
    """Seconds until a sign-in for `username` from this request's address is allowed again (0: now)."""
    limit = settings.LAUNCHER_LOGIN_FAILURE_LIMIT
    waits = []
    if username and by_username.count(_username(username)) >= limit:
        waits.append(by_username.retry_after(_username(username)))
    address = _address(request)
    if address and by_address.count(address) >= limit:
        waits.append(by_address.retry_after(address))
    return max(waits, default=0)


@receiver(user_login_failed, dispatch_uid="launcher-login-failed")
def _count_failure(sender, credentials, request=None, **kwargs):
    username = _username(credentials.get("username"))
    if username:
        by_username.add(username)
    if _address(request):
        by_address.add(_address(request))


@receiver(user_logged_in, dispatch_uid="launcher-logged-in")
def _clear_username(sender, request, user, **kwargs):
    by_username.reset(_username(user.get_username()))


class _ThrottledMixin:
    throttled_message = ""
    retry_after = 0

    def clean(self):
        wait = lockout_seconds(self.request, self.cleaned_data.get("username") or "")
        if wait:
            minutes = math.ceil(wait / 60)
            self.retry_after = wait
            self.throttled_message = (f"Too many failed sign-in attempts; try again in {minutes} "
                                      f"minute{'s' if minutes != 1 else ''}.")
            raise ValidationError(self.throttled_message, code="throttled")
        return super().clean()


class ThrottledAuthenticationForm(_ThrottledMixin, AuthenticationForm):
    pass


class ThrottledAdminAuthenticationForm(_ThrottledMixin, AdminAuthenticationForm):
    pass


def answer_429_when_throttled(view):
    """Wrap a login view (whose form is one of the above): a refused sign-in is answered 429."""
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        form = (getattr(response, "context_data", None) or {}).get("form")
        if getattr(form, "throttled_message", ""):
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after)
        return response
    return wrapped
