"""Audit: every change made through the dashboard pages writes one entry with the same service as
the API (actor, action, target, site, address), details never carry credentials, the audit page
shows staff everything and a site admin their sites' entries, and the Django admin cannot edit it."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from jobs.models import ApiToken, AuditEntry, Dataset, Job
from jobs.services.audit import audit_record

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def entries(action: str):
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


def one(action: str) -> AuditEntry:
    found = entries(action)
    assert len(found) == 1, (action, [(e.action, e.target) for e in AuditEntry.objects.all()])
    return found[0]


def test_every_dashboard_change_writes_one_audit_entry_for_its_site(client, users, process_site, study, data_root):
    client.force_login(users["owner"])
    # settings (and a rename)
    form = client.get(reverse("site-settings", args=["site-1"])).context["form"]
    data = {k: v for k, v in ((n, form[n].value() or "") for n in form.fields) if not isinstance(v, bool)}
    data.update(allowed_data_roots="\n".join(process_site.allowed_data_roots),
                process__default_job_env='{"PYTHONPATH": "/x", "HF_TOKEN": "hf_SECRET_value"}')
    assert client.post(reverse("site-settings", args=["site-1"]), data).status_code == 302
    entry = one("site.update")
    assert entry.target == "site:site-1" and entry.site_id == process_site.pk and entry.actor == "owner"
    assert entry.user == users["owner"] and entry.remote_addr == "127.0.0.1"
    assert entry.detail["changes"]["process"]["default_job_env"]["PYTHONPATH"] == "/x"
    assert "hf_SECRET_value" not in json.dumps(entry.detail)
    client.force_login(users["staff"])  # a rename (staff only)
    assert client.post(reverse("site-settings", args=["site-1"]), {**data, "name": "site-one",
                                                                            "confirm": "yes"}).status_code == 302
    renamed = entries("site.update")[-1]
    assert renamed.target == "site:site-one" and renamed.detail["was"] == "site-1" and renamed.actor == "staff"
    client.force_login(users["owner"])
    AuditEntry.objects.filter(action="site.update").delete()
    site = "site-one"

    # studies and datasets
    assert client.post(reverse("studies", args=[site]), {"name": "second"}).status_code == 302
    assert one("study.create").target == f"site:{site}/study:second"
    detail = reverse("study-detail", args=[site, "second"])
    assert client.post(detail, {"name": "second", "description": "changed", "env": ""}).status_code == 302
    assert one("study.update").detail["changes"]["description"] == "changed"
    (data_root / "valid").mkdir()
    assert client.post(detail, {"action": "dataset", "name": "valid", "source": str(data_root / "valid"),
                                "mode": "ro"}).status_code == 302
    assert one("dataset.create").target == f"site:{site}/study:second/dataset:valid"
    assert client.post(reverse("dataset-edit", args=[site, "second", "valid"]),
                       {"name": "valid", "source": str(data_root / "valid"), "mode": "rw"}).status_code == 302
    assert one("dataset.update").detail["changes"]["mode"] == "rw"
    assert client.post(reverse("dataset-delete", args=[site, "second", "valid"]), {"confirm": "yes"}).status_code == 302
    assert one("dataset.delete").target == f"site:{site}/study:second/dataset:valid"
    assert client.post(reverse("study-delete", args=[site, "second"]), {"confirm": "yes"}).status_code == 302
    assert one("study.delete").target == f"site:{site}/study:second"
    text = f"cohort:\n  train:\n    source: {data_root / 'cohort-a'}\n    mode: rw\n"
    assert client.post(reverse("study-import", args=[site]), {"action": "apply", "text": text}).status_code == 302
    assert one("study_data.replace").detail == {"studies": ["cohort"]}

    # tokens: created and revoked, the secret nowhere in the trail
    response = client.post(reverse("site-tokens", args=[site]), {"name": "fl-server"})
    secret = response.context["secret"]
    token = ApiToken.objects.get(site=process_site)
    assert one("token.create").target == f"site:{site}/token:{token.prefix}"
    assert client.post(reverse("token-revoke", args=[token.pk]), {"confirm": "yes"}).status_code == 302
    assert one("token.revoke").site_id == process_site.pk
    mine = client.post(reverse("user-tokens"), {"name": "laptop"}).context["secret"]
    assert entries("token.create")[-1].site is None

    # launch and terminate (operator)
    client.force_login(users["operator"])
    page = client.get(reverse("job-launch", args=[site])).content.decode()
    job_id = re.search(r'name="job_id" value="([0-9a-f-]{36})"', page).group(1)
    assert client.post(reverse("job-launch", args=[site]), {
        "site": site, "job_id": job_id, "study": "cohort", "image": "", "exe_module": "fake_nvflare_job",
        "set_options": "", "options": ""}).status_code == 302
    job = Job.objects.get(job_id=job_id)
    launch = one("job.launch")
    assert launch.target == f"job:{job.pk}" and launch.site_id == process_site.pk and launch.actor == "operator"
    assert client.post(reverse("job-terminate", args=[job.pk])).status_code == 302
    assert one("job.terminate").site_id == process_site.pk

    trail = json.dumps([[e.target, e.detail] for e in AuditEntry.objects.all()])
    assert secret not in trail and mine not in trail and secret[4:] not in trail
    assert AuditEntry.objects.filter(site__isnull=True).count() == 1  # only the personal token


def test_details_never_carry_credentials(process_site, users):
    entry = audit_record(action="job.launch", target="job:1", user=users["owner"], detail={
        "job_args": {"auth_token": ["-t", "tok-SECRET-1"], "auth_signature": ["-ts", "sig-SECRET-2"],
                     "ssid": ["-d", "ssid-SECRET-3"], "job_id": ["-n", "j1"]},
        "env": {"HF_TOKEN": "hf-SECRET-4", "DB_PASSWORD": "pw-SECRET-5", "LOG_LEVEL": "info"},
        "note": "used flr_AbCdEfGhIjKlMnOpQrStUv0123456789 to call"})
    stored = json.dumps(AuditEntry.objects.get(pk=entry.pk).detail)
    assert "SECRET" not in stored and "AbCdEfGh" not in stored
    assert '"LOG_LEVEL": "info"' in stored and '"-n", "j1"' in stored


def test_audit_page_staff_see_all_site_admins_their_sites_others_nothing(client, users, process_site, other_site):
    for i in range(60):
        audit_record(action="study.update", target=f"site:site-1/study:s{i}", user=users["owner"])
    audit_record(action="site.update", target="site:site-b", user=users["outsider"], detail={"secret-b": 1})
    assert AuditEntry.objects.get(target="site:site-b").site == other_site

    client.force_login(users["owner"])  # admin of site-1 only
    page = client.get(reverse("audit"))
    assert page.status_code == 200
    body = page.content.decode()
    assert "site:site-1/study:s59" in body and "site:site-b" not in body  # newest first, own site only
    assert "site:site-1/study:s0<" not in body  # 61 entries: page 1 of 2
    assert "site:site-1/study:s0<" in client.get(reverse("audit"), {"page": 2}).content.decode()
    assert "No entries" in client.get(reverse("audit"), {"site": "site-b"}).content.decode()
    assert reverse("audit") in client.get(reverse("site-overview", args=["site-1"])).content.decode()  # nav link

    client.force_login(users["staff"])
    body = client.get(reverse("audit"), {"site": "site-b"}).content.decode()
    assert "site:site-b" in body and "site:site-1/" not in body
    body = client.get(reverse("audit"), {"action": "site.update"}).content.decode()
    assert "site:site-b" in body and "study:s59" not in body

    for name in ("viewer", "operator"):
        client.force_login(users[name])
        assert client.get(reverse("audit")).status_code == 403
        assert reverse("audit") not in client.get(reverse("site-overview", args=["site-1"])).content.decode()
    client.logout()
    assert client.get(reverse("audit")).status_code == 302


def test_django_admin_cannot_add_change_or_delete_audit_entries(client, django_user_model, process_site):
    root = django_user_model.objects.create_superuser("root", password="pw-root-123")
    entry = audit_record(action="site.update", target="site:site-1", user=root)
    client.force_login(root)
    assert client.get("/admin/jobs/auditentry/").status_code == 200
    assert client.get("/admin/jobs/auditentry/add/").status_code == 403
    assert client.post(f"/admin/jobs/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    client.post(f"/admin/jobs/auditentry/{entry.pk}/change/", {"action": "forged", "target": "x", "actor": "x"})
    client.post("/admin/jobs/auditentry/", {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"})
    entry.refresh_from_db()
    assert entry.action == "site.update" and AuditEntry.objects.count() == 1
    page = client.get(f"/admin/jobs/auditentry/{entry.pk}/change/").content.decode()
    assert 'name="_save"' not in page


def test_admin_token_revoke_is_audited_and_tokens_cannot_be_unrevoked(client, django_user_model, process_site):
    from jobs.services.tokens import token_create

    root = django_user_model.objects.create_superuser("root", password="pw-root-123")
    token, _ = token_create(site=process_site, name="fl")
    client.force_login(root)
    client.post("/admin/jobs/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEntry.objects.get(action="token.revoke").site == process_site
    client.post(f"/admin/jobs/apitoken/{token.pk}/change/", {"name": "fl", "revoked_at_0": "", "revoked_at_1": ""})
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert Dataset.objects.count() == 0
