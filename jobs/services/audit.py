"""audit_record: one AuditEntry per change made through the API or the dashboard."""

from __future__ import annotations

from typing import Any

from jobs.models import ApiToken, AuditEntry

DETAIL_MAX_CHARS = 4000  # an entry says what changed, it is not a copy of the request


def actor_label(*, user=None, token: ApiToken | None = None) -> str:
    """"alice", "alice (token flr_abc…)" or "site:site-1 (token flr_abc…)"."""
    if token is not None:
        owner = f"site:{token.site.name}" if token.site_id else token.user.get_username()
        return f"{owner} (token {token.prefix}…)"
    if user is not None and getattr(user, "is_authenticated", False):
        return user.get_username()
    return "anonymous"


def audit_record(*, action: str, target: str, user=None, token: ApiToken | None = None,
                 detail: dict[str, Any] | None = None, remote_addr: str = "") -> AuditEntry:
    """Record who did `action` (e.g. "site.update", "job.launch") to `target` (e.g. "site:site-1",
    "job:42"). `user` is a real account or None (site tokens have no user); `detail` must be
    JSON-safe and free of credentials (callers pass field names and redacted values)."""
    account = user if getattr(user, "pk", None) is not None else None
    if account is None and token is not None and token.user_id:
        account = token.user
    detail = detail or {}
    if len(repr(detail)) > DETAIL_MAX_CHARS:
        detail = {"fields": sorted(detail)[:50], "truncated": True}
    return AuditEntry.objects.create(
        user=account, token=token, actor=actor_label(user=user, token=token)[:200], action=action[:64],
        target=target[:300], detail=detail, remote_addr=(remote_addr or "")[:64],
    )
