"""Reads, filtered by who is asking. Staff see every site; members see their sites; a site token
sees its own site's jobs only."""

from __future__ import annotations

from django.db.models import QuerySet

from jobs.models import Job, Role, Site, SiteMembership

ROLE_ORDER = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def sites_visible_to(user) -> QuerySet[Site]:
    if user is None or not user.is_authenticated:
        return Site.objects.none()
    if user.is_staff:
        return Site.objects.all()
    return Site.objects.filter(memberships__user=user).distinct()


def site_role(user, site: Site) -> str | None:
    """The user's role on the site ("admin" for staff), or None."""
    if user is None or not user.is_authenticated:
        return None
    if user.is_staff:
        return Role.ADMIN
    membership = SiteMembership.objects.filter(site=site, user=user).first()
    return membership.role if membership else None


def user_may(user, site: Site, role: str) -> bool:
    have = site_role(user, site)
    return have is not None and ROLE_ORDER[Role(have)] >= ROLE_ORDER[Role(role)]


def jobs_visible_to(user) -> QuerySet[Job]:
    if user is None or not user.is_authenticated:
        return Job.objects.none()
    jobs = Job.objects.select_related("site")
    if user.is_staff:
        return jobs
    return jobs.filter(site__memberships__user=user)
