"""The audit page: who changed what, read-only. Staff see every entry; a site admin sees the
entries of the sites they administer (AuditEntry.site); anyone else gets 403."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.views.decorators.http import require_GET

from jobs.models import AuditEntry, Role, Site
from jobs.views.common import render_page

PAGE_SIZE = 50


def audit_sites(user):
    """The sites whose audit entries `user` may read; None means all (staff)."""
    if user.is_staff:
        return None
    return Site.objects.filter(memberships__user=user, memberships__role=Role.ADMIN).distinct()


@login_required
@require_GET
def audit_log(request):
    allowed = audit_sites(request.user)
    if allowed is not None and not allowed.exists():
        raise PermissionDenied("The audit log is for staff and site admins.")
    entries = AuditEntry.objects.select_related("site").order_by("-at", "-id")
    visible = Site.objects.all() if allowed is None else allowed
    site_choices = list(visible.order_by("name").values_list("name", flat=True))
    if allowed is not None:
        entries = entries.filter(site__in=allowed)
    filters = {"site": request.GET.get("site", "").strip()[:63], "action": request.GET.get("action", "").strip()[:64]}
    if filters["site"]:
        entries = entries.filter(site__name=filters["site"]) if filters["site"] in site_choices else entries.none()
    if filters["action"]:
        entries = entries.filter(action__startswith=filters["action"])
    page = Paginator(entries, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"entry": e, "detail": json.dumps(e.detail, sort_keys=True)[:500] if e.detail else ""} for e in page]
    actions = list(AuditEntry.objects.order_by("action").values_list("action", flat=True).distinct()[:200])
    query = urlencode({k: v for k, v in filters.items() if v})
    return render_page(request, "jobs/audit.html", {
        "page": page, "rows": rows, "filters": filters, "site_choices": site_choices, "actions": actions,
        "query": query,
    }, section="audit")
