"""The site members page: who holds which role, what each role may do, and (staff only, as
docs/security.md says) add a member, change a role, remove a member. Site admins see it read-only;
viewers and operators get 403. Every change is audited; removal asks for confirmation first."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from jobs.models import Role, SiteMembership
from jobs.services import members
from jobs.services.audit import audit_request
from jobs.services.policy import StaffOnly
from jobs.views.common import get_site, render_page
from jobs.views.confirm import confirm_page, confirmed


def _target(site, membership) -> str:
    return f"site:{site.name}/member:{membership.user.get_username()}"


def _require_staff(request) -> None:
    if not request.user.is_staff:
        raise PermissionDenied("Only platform staff may manage site members.")


@login_required
@require_http_methods(["GET", "POST"])
def site_members(request, site):
    site = get_site(request, site, "admin")
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        _require_staff(request)
        action = request.POST.get("action")
        try:
            if action == "add":
                membership = members.member_add(site=site, username=request.POST.get("username", ""),
                                                role=request.POST.get("role", ""), actor=request.user)
                audit_request(request, "member.add", _target(site, membership), {"role": membership.role}, site=site)
                messages.success(request, f"{membership.user.get_username()} is now {membership.role} of {site.name}.")
            elif action == "role":
                membership = _membership(site, request.POST.get("member"))
                previous = members.member_set_role(membership=membership, role=request.POST.get("role", ""),
                                                   actor=request.user)
                if previous != membership.role:
                    audit_request(request, "member.role", _target(site, membership),
                                  {"role": membership.role, "was": previous}, site=site)
                messages.success(request, f"{membership.user.get_username()} is {membership.role} of {site.name}.")
            else:
                raise ValidationError({"action": ["Unknown action: use add or role."]})
            return redirect("site-members", site.name)
        except StaffOnly as exc:
            raise PermissionDenied(str(exc)) from None
        except ValidationError as exc:
            errors = exc.message_dict
    return render_page(request, "jobs/members.html", {
        "members": SiteMembership.objects.filter(site=site).select_related("user").order_by("user__username"),
        "roles": Role.values, "abilities": members.ROLE_ABILITIES, "may_manage": request.user.is_staff,
        "errors": errors, "posted": request.POST if errors else {},
    }, site=site, section="members", status=400 if errors else 200)


def _membership(site, pk) -> SiteMembership:
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise ValidationError({"member": ["Choose a member."]}) from None
    # Scoped to this site: a membership of another site is not found here.
    return get_object_or_404(SiteMembership.objects.select_related("user"), pk=pk, site=site)


@login_required
@require_http_methods(["GET", "POST"])
def member_remove(request, site, pk):
    site = get_site(request, site, "admin")
    _require_staff(request)
    membership = get_object_or_404(SiteMembership.objects.select_related("user"), pk=pk, site=site)
    name = membership.user.get_username()
    cancel = reverse("site-members", args=[site.name])
    if not confirmed(request):
        return confirm_page(request, title=f"Remove {name} from {site.name}?", consequences=[
            f"{name} loses the {membership.role} role on {site.name}: the site's pages and API are closed to them "
            "within seconds (open live pages close at their next heartbeat). Their own tokens stay, but no longer "
            "reach this site. Add them again to undo.",
        ], button="Remove member", cancel=cancel, site=site, section="members", refused=request.method == "POST")
    role = membership.role
    members.member_remove(membership=membership, actor=request.user)
    audit_request(request, "member.remove", f"site:{site.name}/member:{name}", {"role": role}, site=site)
    messages.success(request, f"{name} removed from {site.name}.")
    return redirect(cancel)
