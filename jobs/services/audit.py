"""audit_record: one AuditEntry per change made through the API or the dashboard.

Both doors use it: API views through ApiMixin.audit, dashboard views through audit_request. The
entry names the site the change was made on or within (from the target, "site:NAME..." or
"job:PK"), so a site admin's audit page can list theirs. Details never carry credentials: values
under credential-looking keys and anything shaped like an API token are replaced before saving.
"""

from __future__ import annotations

import re
from typing import Any

from jobs.models import ApiToken, AuditEntry, Job, Site

DETAIL_MAX_CHARS = 4000  # an entry says what changed, it is not a copy of the request
REDACTED = "***"
# Keys whose values are (or may be) secrets, at any depth: NVFlare job args (auth_token,
# auth_signature, ssid), env variables (HF_TOKEN, DB_PASSWORD, API_KEY...), TLS material.
SECRET_KEY_RE = re.compile(r"token|secret|passw|passwd|signature|ssid|credential|auth|api_?key|private|_key$|^key$",
                           re.IGNORECASE)
TOKEN_VALUE_RE = re.compile(r"flr_[A-Za-z0-9_-]{8,}")
SITE_TARGET_RE = re.compile(r"^site:([^/]+)")
JOB_TARGET_RE = re.compile(r"^job:(\d+)$")


def actor_label(*, user=None, token: ApiToken | None = None) -> str:
    """"alice", "alice (token flr_abc…)" or "site:site-1 (token flr_abc…)"."""
    if token is not None:
        owner = f"site:{token.site.name}" if token.site_id else token.user.get_username()
        return f"{owner} (token {token.prefix}…)"
    if user is not None and getattr(user, "is_authenticated", False):
        return user.get_username()
    return "anonymous"


def redact(value: Any, key: str = "") -> Any:
    """`value` with secrets replaced: whole values under credential-looking keys, and API-token-shaped
    substrings anywhere."""
    if key and SECRET_KEY_RE.search(key):
        return REDACTED if value not in (None, "", [], {}) else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return TOKEN_VALUE_RE.sub("flr_" + REDACTED, value)
    return value


def site_of_target(target: str) -> Site | None:
    """The site a target is on or within: "site:NAME[/...]" or "job:PK"."""
    match = SITE_TARGET_RE.match(target)
    if match:
        return Site.objects.filter(name=match.group(1)).first()
    match = JOB_TARGET_RE.match(target)
    if match:
        job = Job.objects.select_related("site").filter(pk=int(match.group(1))).only("site").first()
        return job.site if job else None
    return None


def audit_record(*, action: str, target: str, user=None, token: ApiToken | None = None,
                 detail: dict[str, Any] | None = None, remote_addr: str = "", site: Site | None = None) -> AuditEntry:
    """Record who did `action` (e.g. "site.update", "job.launch") to `target` (e.g. "site:site-1",
    "job:42"). `user` is a real account or None (site tokens have no user); `detail` must be
    JSON-safe (credentials are redacted here). `site` defaults to the one the target names."""
    account = user if getattr(user, "pk", None) is not None else None
    if account is None and token is not None and token.user_id:
        account = token.user
    detail = redact(detail or {})
    if len(repr(detail)) > DETAIL_MAX_CHARS:
        detail = {"fields": sorted(map(str, detail))[:50], "truncated": True}
    if site is None:
        site = site_of_target(target)
    if site is None and token is not None and token.site_id:
        site = token.site
    return AuditEntry.objects.create(
        user=account, token=token, actor=actor_label(user=user, token=token)[:200], action=action[:64],
        target=target[:300], detail=detail, remote_addr=(remote_addr or "")[:64], site=site,
    )


def audit_request(request, action: str, target: str, detail: dict[str, Any] | None = None, *,
                  site: Site | None = None) -> AuditEntry:
    """audit_record for a dashboard (session) request: the signed-in user and the client address."""
    return audit_record(action=action, target=target, user=request.user, detail=detail,
                        remote_addr=request.META.get("REMOTE_ADDR", ""), site=site)
