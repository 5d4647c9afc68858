"""The site Notifications page: the site's webhooks, their delivery history and a "Send test"
button. Only platform staff add or remove a webhook (a URL makes the launcher send requests from
inside the site's network: docs/security.md); site admins see the page, its secrets (to verify
signatures) and may send a test. Email recipients of the same events (when LAUNCHER_EMAIL_HOST is
set) follow the same rule: staff add and remove them. Viewers and operators get 403."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from jobs.models import Webhook, WebhookDelivery
from jobs.services import notifications
from jobs.services.audit import audit_request
from jobs.services.policy import StaffOnly
from jobs.views.common import get_site, render_page
from jobs.views.confirm import confirm_page, confirmed

HISTORY = 50  # deliveries shown


@login_required
@require_http_methods(["GET", "POST"])
def site_webhooks(request, site):
    site = get_site(request, site, "admin")
    errors: dict[str, list[str]] = {}
    by_email = "email" in request.POST
    if request.method == "POST":
        try:
            if by_email:
                hook = notifications.email_recipient_create(site=site, email=request.POST.get("email", ""),
                                                            events=request.POST.getlist("events"), actor=request.user)
            else:
                hook = notifications.webhook_create(site=site, url=request.POST.get("url", ""),
                                                    events=request.POST.getlist("events"), actor=request.user)
        except StaffOnly as exc:
            raise PermissionDenied(str(exc)) from None
        except ValidationError as exc:
            errors = exc.message_dict
        else:
            audit_request(request, "webhook.add", f"site:{site.name}/webhook:{hook.pk}",
                          {"url": hook.url, "email": hook.email, "events": hook.events}, site=site)
            messages.success(request, f"{'Email recipient' if by_email else 'Webhook to'} {hook.target} added.")
            return redirect("site-webhooks", site.name)
    return render_page(request, "jobs/webhooks.html", {
        "webhooks": Webhook.objects.filter(site=site).order_by("pk"),
        "deliveries": WebhookDelivery.objects.filter(webhook__site=site).select_related("webhook")[:HISTORY],
        "events": notifications.EVENTS, "may_manage": request.user.is_staff,
        "errors": errors, "posted_url": request.POST.get("url", "") if errors else "",
        "posted_email": request.POST.get("email", "") if errors else "",
        "posted_events": request.POST.getlist("events") if errors else [], "posted_by_email": by_email and errors,
        "email_enabled": notifications.email_enabled(),
    }, site=site, section="webhooks", status=400 if errors else 200)


@login_required
@require_POST
def webhook_test(request, site, pk):
    site = get_site(request, site, "admin")
    hook = get_object_or_404(Webhook, pk=pk, site=site)
    delivery = notifications.webhook_test(webhook=hook)
    if delivery.error:
        messages.error(request, f"Test to {hook.target} failed: {delivery.error}")
    else:
        how = "SMTP" if hook.email else "HTTP"
        messages.success(request, f"Test to {hook.target} delivered ({how} {delivery.status_code}).")
    return redirect("site-webhooks", site.name)


@login_required
@require_http_methods(["GET", "POST"])
def webhook_remove(request, site, pk):
    site = get_site(request, site, "admin")
    if not request.user.is_staff:
        raise PermissionDenied("Only platform staff may remove webhooks.")
    hook = get_object_or_404(Webhook, pk=pk, site=site)
    cancel = reverse("site-webhooks", args=[site.name])
    if not confirmed(request):
        return confirm_page(request, title=f"Remove the webhook to {hook.target}?", consequences=[
            "It receives no more notifications, and its delivery history is deleted with it.",
        ], button="Remove webhook", cancel=cancel, site=site, section="webhooks", refused=request.method == "POST")
    url = hook.target
    notifications.webhook_delete(webhook=hook, actor=request.user)
    audit_request(request, "webhook.remove", f"site:{site.name}/webhook:{pk}", {"url": hook.url, "email": hook.email},
                  site=site)
    messages.success(request, f"Webhook to {url} removed.")
    return redirect(cancel)
