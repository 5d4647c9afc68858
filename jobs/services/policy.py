"""Who may change which site and study settings (docs/architecture.md "Who may do what").

Everything that widens what a job can reach on the host belongs to platform staff (`is_staff`):
the site row itself (name, backend, allowed_data_roots) and every backend setting except the few
in SITE_ADMIN_SETTINGS, and any study docker_kwargs outside SITE_ADMIN_DOCKER_KWARGS. Site admins
run their site inside those bounds. The catalog services call `staff_only_changes` with the
values before and after (normalised), so the API, the dashboard forms and study file imports all
get the same decision and the same message; an unchanged value is never a "change".

`actor=None` is a trusted caller (management commands, migrations, fixtures), as in the catalog.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from django.core.exceptions import ValidationError

from backends import config_class

# Backend settings a site admin may change: they bound a job's time and its environment inside the
# sandbox the staff-owned settings define; none reaches the host.
SITE_ADMIN_SETTINGS: dict[str, frozenset[str]] = {
    "docker": frozenset({"timeout", "default_job_env"}),
    "kubernetes": frozenset({"timeout", "pending_timeout", "request_timeout", "ephemeral_storage"}),
    "process": frozenset({"default_job_env"}),
}
# Study docker_kwargs a site admin may set: resource limits only, nothing that widens isolation.
SITE_ADMIN_DOCKER_KWARGS = frozenset({
    "mem_limit", "memswap_limit", "mem_reservation", "nano_cpus", "cpu_shares", "cpu_period", "cpu_quota",
    "cpuset_cpus", "cpuset_mems", "shm_size", "pids_limit", "ulimits", "device_requests",
})
SITE_ROW_FIELDS = ("name", "backend", "allowed_data_roots")


class StaffOnly(ValidationError):
    """A non-staff caller asked to change staff-only settings. A ValidationError keyed by field (so
    forms show it inline and file imports report it), turned into a 403 by the API."""

    def __init__(self, fields: Iterable[str], detail: str | None = None):
        self.fields = sorted(set(fields))
        self.detail = detail or f"Only platform staff may change: {', '.join(self.fields)}."
        super().__init__({field: [f"Only platform staff may change {field}."] for field in self.fields})

    def __str__(self) -> str:
        return self.detail


def is_staff(actor: Any) -> bool:
    return actor is None or bool(getattr(actor, "is_staff", False))


def require_staff(actor: Any, what: str) -> None:
    if not is_staff(actor):
        raise StaffOnly([what], detail=f"Only platform staff may {what}.")


def site_snapshot(site) -> dict[str, Any]:
    return {"name": site.name, "backend": site.backend, "allowed_data_roots": list(site.allowed_data_roots or []),
            **{kind: dict(getattr(site, kind) or {}) for kind in SITE_ADMIN_SETTINGS}}


def site_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ; a missing backend key counts as its default."""
    changed = [f for f in SITE_ROW_FIELDS if before.get(f) != after.get(f)]
    for kind in SITE_ADMIN_SETTINGS:
        old, new = before.get(kind) or {}, after.get(kind) or {}
        if not isinstance(new, Mapping) or not isinstance(old, Mapping):
            changed.append(kind)
            continue
        defaults = _defaults(kind)
        for key in sorted(set(old) | set(new) | set(defaults)):
            if old.get(key, defaults.get(key)) != new.get(key, defaults.get(key)):
                changed.append(f"{kind}.{key}")
    return changed


def staff_only_site_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    return [name for name in site_changes(before, after) if not _site_admin_may(name)]


def _site_admin_may(name: str) -> bool:
    kind, _, key = name.partition(".")
    return key in SITE_ADMIN_SETTINGS.get(kind, ())


def check_site_change(actor: Any, before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    if not is_staff(actor):
        fields = staff_only_site_changes(before, after)
        if fields:
            raise StaffOnly(fields)


def check_docker_kwargs_change(actor: Any, before: Any, after: Any) -> None:
    """Site admins may add, change or remove only resource-style docker_kwargs."""
    if is_staff(actor) or not isinstance(after, Mapping):
        return
    before = before if isinstance(before, Mapping) else {}
    fields = [f"docker_kwargs.{key}" for key in sorted(set(before) | set(after), key=str)
              if before.get(key) != after.get(key) and key not in SITE_ADMIN_DOCKER_KWARGS]
    if fields:
        raise StaffOnly(fields)


def _defaults(kind: str) -> dict[str, Any]:
    try:
        return config_class(kind).from_dict({}).to_dict()
    except Exception:  # a backend whose defaults need the environment: compare keys as given
        return {f.name: f.default for f in dataclasses.fields(config_class(kind))
                if f.default is not dataclasses.MISSING}
