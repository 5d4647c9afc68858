"""Server-rendered pages. Reads only through selectors."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from jobs import selectors


@login_required
def overview(request):
    sites = selectors.sites_visible_to(request.user)
    jobs = selectors.jobs_visible_to(request.user)[:50]
    return render(request, "jobs/overview.html", {"sites": sites, "jobs": jobs})
