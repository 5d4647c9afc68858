"""The site Members page (issue #17, "People and audit in the dashboard"): members and what each
role may do; staff add, re-role and remove members (audited, removal confirmed). docs/security.md
gives members to staff, so a site admin sees the page read-only and every change is a 403; viewers
and operators do not reach it; nobody acts on another site's members through this site."""

from __future__ import annotations

import pytest
from django.urls import reverse

from jobs.models import AuditEntry, Role, SiteMembership

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def members_url(site="site-1"):
    return reverse("site-members", args=[site])


@pytest.mark.parametrize("who", ["viewer", "operator"])
def test_viewers_and_operators_get_403(client, users, process_site, who):
    client.force_login(users[who])
    assert client.get(members_url()).status_code == 403
    assert client.post(members_url(), {"action": "add", "username": "outsider", "role": "admin"}).status_code == 403
    pk = SiteMembership.objects.get(user=users["viewer"]).pk
    remove = reverse("site-member-remove", args=["site-1", pk])
    assert client.post(remove, {"confirm": "yes"}).status_code == 403
    assert SiteMembership.objects.filter(site=process_site).count() == 3
    assert not SiteMembership.objects.filter(user=users["outsider"]).exists()


def test_site_admin_sees_members_and_roles_read_only(client, users, process_site):
    client.force_login(users["owner"])
    page = client.get(members_url())
    assert page.status_code == 200
    body = page.content.decode()
    for name, role in (("owner", "admin"), ("operator", "operator"), ("viewer", "viewer")):
        assert f"<td>{name}</td><td class=\"role\">{role}</td>" in body
    assert 'id="roles"' in body and "launch and terminate" in body
    assert "Read-only" in body and 'id="member-add"' not in body and "Remove…" not in body
    assert reverse("site-members", args=["site-1"]) in client.get(reverse("site-overview", args=["site-1"])).content.decode()


def test_site_admin_may_not_add_promote_or_remove(client, users, process_site):
    client.force_login(users["owner"])
    viewer = SiteMembership.objects.get(site=process_site, user=users["viewer"])
    assert client.post(members_url(), {"action": "add", "username": "outsider", "role": "viewer"}).status_code == 403
    assert client.post(members_url(), {"action": "role", "member": viewer.pk, "role": "admin"}).status_code == 403
    # "staff" is no role at all, and staff status is never granted here.
    assert client.post(members_url(), {"action": "role", "member": viewer.pk, "role": "staff"}).status_code == 403
    remove = reverse("site-member-remove", args=["site-1", viewer.pk])
    assert client.get(remove).status_code == 403
    assert client.post(remove, {"confirm": "yes"}).status_code == 403
    viewer.refresh_from_db()
    assert viewer.role == Role.VIEWER
    assert not SiteMembership.objects.filter(user=users["outsider"], site=process_site).exists()
    users["viewer"].refresh_from_db()
    assert not users["viewer"].is_staff
    assert not AuditEntry.objects.filter(action__startswith="member.").exists()


def test_admin_of_another_site_cannot_reach_this_sites_members(client, users, process_site, other_site):
    client.force_login(users["outsider"])  # admin of site-b only
    assert client.get(members_url("site-1")).status_code == 404
    viewer = SiteMembership.objects.get(site=process_site, user=users["viewer"])
    assert client.post(members_url("site-1"), {"action": "role", "member": viewer.pk, "role": "admin"}).status_code == 404
    # Nor through their own site's URL with a membership of site-1.
    assert client.post(members_url("site-b"), {"action": "role", "member": viewer.pk, "role": "admin"}).status_code == 403
    assert client.post(reverse("site-member-remove", args=["site-b", viewer.pk]), {"confirm": "yes"}).status_code == 403
    viewer.refresh_from_db()
    assert viewer.role == Role.VIEWER


def test_staff_cannot_reach_a_membership_through_another_sites_url(client, users, process_site, other_site):
    client.force_login(users["staff"])
    viewer = SiteMembership.objects.get(site=process_site, user=users["viewer"])
    assert client.post(members_url("site-b"), {"action": "role", "member": viewer.pk, "role": "admin"}).status_code == 404
    assert client.post(reverse("site-member-remove", args=["site-b", viewer.pk]), {"confirm": "yes"}).status_code == 404
    viewer.refresh_from_db()
    assert viewer.role == Role.VIEWER


def test_staff_add_change_and_remove_with_audit_and_confirmation(client, users, process_site):
    client.force_login(users["staff"])
    page = client.get(members_url()).content.decode()
    assert 'id="member-add"' in page and "Read-only" not in page
    added = client.post(members_url(), {"action": "add", "username": "outsider", "role": "operator"})
    assert added.status_code == 302
    membership = SiteMembership.objects.get(site=process_site, user=users["outsider"])
    assert membership.role == Role.OPERATOR
    entry = AuditEntry.objects.get(action="member.add")
    assert (entry.target, entry.detail, entry.site_id, entry.actor) == (
        "site:site-1/member:outsider", {"role": "operator"}, process_site.pk, "staff")

    assert client.post(members_url(), {"action": "role", "member": membership.pk, "role": "admin"}).status_code == 302
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN
    assert AuditEntry.objects.get(action="member.role").detail == {"role": "admin", "was": "operator"}

    remove = reverse("site-member-remove", args=["site-1", membership.pk])
    ask = client.get(remove)
    assert ask.status_code == 200 and 'name="confirm" value="yes"' in ask.content.decode()
    assert "outsider loses the admin role on site-1" in ask.content.decode()
    crafted = client.post(remove)
    assert crafted.status_code == 400
    assert SiteMembership.objects.filter(pk=membership.pk).exists()
    assert client.post(remove, {"confirm": "yes"}).status_code == 302
    assert not SiteMembership.objects.filter(pk=membership.pk).exists()
    assert AuditEntry.objects.get(action="member.remove").detail == {"role": "admin"}
    assert client.get(reverse("site-overview", args=["site-1"])).status_code == 200  # staff still
    client.force_login(users["outsider"])
    assert client.get(reverse("site-overview", args=["site-1"])).status_code == 404


@pytest.mark.parametrize("data, field", [
    ({"action": "add", "username": "nobody", "role": "viewer"}, "username"),
    ({"action": "add", "username": "", "role": "viewer"}, "username"),
    ({"action": "add", "username": "viewer", "role": "viewer"}, "username"),  # already a member
    ({"action": "add", "username": "outsider", "role": "staff"}, "role"),
    ({"action": "add", "username": "outsider", "role": "superuser"}, "role"),
    ({"action": "role", "member": "x", "role": "admin"}, "member"),
    ({"action": "grant", "username": "outsider"}, "action"),
])
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(client, users, process_site, data, field):
    client.force_login(users["staff"])
    before = sorted(SiteMembership.objects.values_list("user__username", "role"))
    response = client.post(members_url(), data)
    assert response.status_code == 400
    assert f"<li>{field}: " in response.content.decode()
    assert sorted(SiteMembership.objects.values_list("user__username", "role")) == before
    assert not AuditEntry.objects.filter(action__startswith="member.").exists()
    users["outsider"].refresh_from_db()
    assert not users["outsider"].is_staff


def test_staff_role_change_to_staff_is_refused(client, users, process_site):
    client.force_login(users["staff"])
    viewer = SiteMembership.objects.get(site=process_site, user=users["viewer"])
    response = client.post(members_url(), {"action": "role", "member": viewer.pk, "role": "staff"})
    assert response.status_code == 400 and "<li>role: " in response.content.decode()
    viewer.refresh_from_db()
    users["viewer"].refresh_from_db()
    assert viewer.role == Role.VIEWER and not users["viewer"].is_staff
