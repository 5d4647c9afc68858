"""Site members: add a user by username, change a role, remove a member.

docs/security.md gives site members to platform staff ("site members (Django admin)"), so every
change here requires staff (policy.require_staff); site admins see the list read-only. A role is
one of viewer/operator/admin: staff status is never granted through a membership. Bad input raises
a ValidationError keyed by the field; nothing is written then. The caller audits.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from jobs.models import Role, Site, SiteMembership
from jobs.services.policy import require_staff

# What each role may do, shown on the members page (docs/security.md "Actors").
ROLE_ABILITIES: list[tuple[str, str]] = [
    (Role.VIEWER, "Read the site's jobs, events and logs tails."),
    (Role.OPERATOR, "Everything a viewer may, and launch and terminate the site's jobs."),
    (Role.ADMIN, "Everything an operator may, and studies, datasets, the site's timeouts and default job env, "
                 "site tokens; read the site's settings and audit log. Host-level settings stay with staff."),
]


def _role(value: str) -> str:
    if value not in Role.values:
        raise ValidationError({"role": [f"Choose one of: {', '.join(Role.values)}."]})
    return value


def member_add(*, site: Site, username: str, role: str, actor) -> SiteMembership:
    require_staff(actor, "manage site members")
    role = _role(role)
    username = (username or "").strip()
    if not username:
        raise ValidationError({"username": ["Enter a username."]})
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ValidationError({"username": [f"No user named “{username}”."]})
    try:
        with transaction.atomic():
            return SiteMembership.objects.create(site=site, user=user, role=role)
    except IntegrityError:
        raise ValidationError({"username": [f"{username} is already a member of {site.name}."]}) from None


def member_set_role(*, membership: SiteMembership, role: str, actor) -> str:
    """Change the role; return the previous one."""
    require_staff(actor, "manage site members")
    role = _role(role)
    previous = membership.role
    if previous != role:
        membership.role = role
        membership.save(update_fields=["role"])
    return previous


def member_remove(*, membership: SiteMembership, actor) -> None:
    require_staff(actor, "manage site members")
    membership.delete()
