"""/: every site the user may see, with its health and its jobs per state."""

from django.contrib.auth.decorators import login_required
from django.views.decorators.http import require_GET

from jobs.services.site_health import reconcile_stale_seconds, sites_health_visible_to
from jobs.views.common import render_page


@login_required
@require_GET
def home(request):
    healths = sites_health_visible_to(request.user)
    if not healths:
        return render_page(request, "jobs/no_sites.html", {})
    return render_page(request, "jobs/home.html", {
        "healths": healths, "stale_seconds": reconcile_stale_seconds()})
