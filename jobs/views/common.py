"""Access helpers shared by the dashboard pages.

A site the user is not a member of does not exist for them (404); a member whose role is too low
gets 403. Reads need "viewer", launch/terminate "operator", configuration "admin".
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, render

from jobs import selectors
from jobs.models import Job


def get_site(request, name: str, role: str = "viewer"):
    """The site named `name` if the user holds `role` on it; remembered as the current site."""
    site = get_object_or_404(selectors.sites_visible_to(request.user), name=name)
    if not selectors.user_may(request.user, site, role):
        raise PermissionDenied(f"You need the {role} role on {site.name} for this page.")
    request.session["site"] = site.name
    return site


def get_job(request, pk: int, role: str = "viewer") -> Job:
    job = get_object_or_404(selectors.jobs_visible_to(request.user), pk=pk)
    if not selectors.user_may(request.user, job.site, role):
        raise PermissionDenied(f"You need the {role} role on {job.site.name} for this.")
    return job


def render_page(request, template: str, context: dict, *, site=None, section: str = "", status: int = 200):
    """Render with the navigation context every dashboard template expects (site, section, role)."""
    if site is not None:
        context.setdefault("role", selectors.site_role(request.user, site))
    context.update(site=site, section=section)
    return render(request, template, context, status=status)


def parse_int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
