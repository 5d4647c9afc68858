"""Who may do what through the API. Views call these first; they raise DRF exceptions that
errors.py turns into the one error shape.

- A site token acts for its site's jobs only: launch, read, terminate. It never reads or changes
  site configuration (sites, studies, datasets, study files).
- A user token or a browser session acts as the user: site members see their sites (viewer),
  operators also launch and terminate, site admins change the site, its studies and datasets;
  staff see and change everything. A site the caller cannot see answers 404, not 403.
"""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import exceptions

from jobs import selectors
from jobs.api.auth import SitePrincipal
from jobs.models import Job, Site

SITE_TOKEN_NO_CONFIG = "Site tokens may only launch, read and terminate their own site's jobs."


def is_site_token(user) -> bool:
    return isinstance(user, SitePrincipal)


def account_of(request):
    """The user account behind the request, or None for a site token."""
    return None if is_site_token(request.user) else request.user


def token_of(request):
    from jobs.models import ApiToken

    return request.auth if isinstance(request.auth, ApiToken) else None


def remote_addr(request) -> str:
    return request.META.get("REMOTE_ADDR", "")


def require_user(request) -> None:
    if is_site_token(request.user):
        raise exceptions.PermissionDenied(SITE_TOKEN_NO_CONFIG)


def sites_for(request) -> QuerySet[Site]:
    require_user(request)
    return selectors.sites_visible_to(request.user)


def site_for(request, name: str, *, role: str = "viewer") -> Site:
    """The named site if the caller (a user) holds at least `role` on it."""
    site = sites_for(request).filter(name=name).first()
    if site is None:
        raise exceptions.NotFound(f"No site named {name!r}.")
    if not selectors.user_may(request.user, site, role):
        raise exceptions.PermissionDenied(f"You need the {role} role on site {site.name}.")
    return site


def jobs_for(request) -> QuerySet[Job]:
    user = request.user
    if is_site_token(user):
        return Job.objects.select_related("site").filter(site=user.site)
    return selectors.jobs_visible_to(user)


def job_for(request, pk, *, role: str = "viewer") -> Job:
    job = jobs_for(request).filter(pk=pk).first()
    if job is None:
        raise exceptions.NotFound("No such job.")
    if role != "viewer" and not is_site_token(request.user) and not selectors.user_may(request.user, job.site, role):
        raise exceptions.PermissionDenied(f"You need the {role} role on site {job.site.name}.")
    return job


def launch_site_for(request, name) -> Site:
    """The site a launch names, if the caller may launch there. Unknown (or invisible) sites are a
    400 on the `site` field; a site token naming another site, or a mere viewer, is a 403."""
    user = request.user
    if is_site_token(user):
        if name != user.site.name:
            raise exceptions.PermissionDenied(f"This token belongs to site {user.site.name}; it cannot launch on {name!r}.")
        return user.site  # loaded with the token (see jobs.services.tokens.TOKEN_TRUST_SECONDS)
    site = selectors.sites_visible_to(user).filter(name=name).first()
    if site is None:
        raise exceptions.ValidationError({"site": [f"No site named {name!r}."]})
    if not selectors.user_may(user, site, "operator"):
        raise exceptions.PermissionDenied(f"You need the operator role on site {site.name} to launch jobs.")
    return site
