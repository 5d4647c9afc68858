"""API token pages: a user's own tokens and a site's tokens, and revocation."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from jobs import forms, selectors
from jobs.models import ApiToken
from jobs.services.audit import audit_request
from jobs.services.tokens import token_create, token_revoke
from jobs.views.common import get_site, render_page
from jobs.views.confirm import confirm_page, confirmed

TOKEN_ENV = "FLARE_LAUNCHER_TOKEN"  # the variable README "Using it from NVFlare" uses


@login_required
@require_http_methods(["GET", "POST"])
def user_tokens(request):
    form = forms.TokenForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        token, secret = token_create(user=request.user, name=form.cleaned_data["name"], created_by=request.user)
        audit_request(request, "token.create", f"token:{token.prefix}", {"name": token.name, "owner": "user"})
        form = forms.TokenForm()
    return render_page(request, "jobs/tokens.html", {"form": form, "secret": secret,
                                                     "tokens": selectors.tokens_of(user=request.user)},
                       section="tokens")


@login_required
@require_http_methods(["GET", "POST"])
def site_tokens(request, site):
    site = get_site(request, site, "admin")
    form = forms.TokenForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        token, secret = token_create(site=site, name=form.cleaned_data["name"], created_by=request.user)
        audit_request(request, "token.create", f"site:{site.name}/token:{token.prefix}", {"name": token.name},
                      site=site)
        form = forms.TokenForm()
    snippet = resources_snippet(request, site) if secret else None
    return render_page(request, "jobs/tokens.html", {"form": form, "secret": secret, "snippet": snippet,
                                                     "tokens": selectors.tokens_of(site=site)}, site=site,
                       section="tokens")


def resources_snippet(request, site) -> str:
    """local/flare_launcher__p_resources.json as README "Using it from NVFlare" shows it, for this
    launcher and site. The token is never in it (local/ is readable by every job): token_env names
    the variable the FL parent reads it from."""
    url = request.build_absolute_uri("/").rstrip("/")
    return json.dumps({"format_version": 2, "components": [{
        "id": "flare_launcher", "path": "flare_launcher_client.FlareLauncherJobLauncher",
        "args": {"url": url, "site": site.name, "token_env": TOKEN_ENV, "timeout": 120},
    }]}, indent=2)


@login_required
@require_http_methods(["GET", "POST"])
def token_revoke_view(request, pk):
    token = get_object_or_404(ApiToken.objects.select_related("site", "user"), pk=pk)
    if token.user_id is not None:
        if token.user_id != request.user.pk:
            raise PermissionDenied("Not your token.")
        target = reverse("user-tokens")
    else:
        get_site(request, token.site.name, "admin")
        target = reverse("site-tokens", args=[token.site.name])
    if token.revoked_at is not None:
        messages.info(request, f"Token {token.prefix}… was already revoked.")
        return redirect(target)
    if not confirmed(request):
        label = f"“{token.name}” ({token.prefix}…)" if token.name else f"{token.prefix}…"
        if token.site_id:
            consequence = (f"Whatever uses token {label}, typically the FL server of site {token.site.name}, is "
                           "cut off within seconds: its launches, reads and terminations are refused (401) until it is "
                           "given a new token. Revoking cannot be undone.")
        else:
            consequence = (f"Scripts and tools that use your token {label} are refused (401) within seconds. "
                           "Revoking cannot be undone.")
        return confirm_page(request, title=f"Revoke token {token.prefix}…?", consequences=[consequence],
                            button="Revoke token", cancel=target, site=token.site, section="tokens",
                            refused=request.method == "POST")
    token_revoke(token=token)
    audit_request(request, "token.revoke", (f"site:{token.site.name}/" if token.site_id else "")
                  + f"token:{token.prefix}", {"name": token.name}, site=token.site)
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect(target)
