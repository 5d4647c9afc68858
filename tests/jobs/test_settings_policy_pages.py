"""Who may change which settings, through the dashboard forms and the Django admin: the same
decisions and messages as the API (tests/api/test_settings_policy.py)."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from jobs.models import Role, Site, SiteMembership, Study
from jobs.services import catalog
from tests.util import docker_workspace

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


@pytest.fixture
def docker_site(db, users, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "data" / "a").mkdir(parents=True)
    site = catalog.site_create(name="site-d", backend="docker", allowed_data_roots=[str(tmp_path / "data")],
                               docker={"workspace": str(ws)})
    for user, role in (("owner", Role.ADMIN), ("operator", Role.OPERATOR), ("viewer", Role.VIEWER)):
        SiteMembership.objects.create(site=site, user=users[user], role=role)
    return site


def settings_post(client, site, **changes):
    """What a browser sends: every enabled field of the page as shown, with `changes` applied."""
    url = reverse("site-settings", args=[site.name])
    form = client.get(url).context["form"]
    data = {}
    for name, field in form.fields.items():
        if field.widget.attrs.get("disabled"):
            continue  # browsers do not submit disabled fields
        value = form[name].value()
        if value is True:
            data[name] = "on"
        elif value not in (None, False):
            data[name] = field.prepare_value(value) if not isinstance(value, str) else value
    data.update(changes)
    return client.post(url, data)


def row(site):
    site = Site.objects.get(pk=site.pk)
    return site.name, site.backend, site.allowed_data_roots, site.docker


def test_site_admin_sees_host_settings_read_only_and_staff_sees_them_editable(client, users, docker_site):
    client.force_login(users["owner"])
    page = client.get(reverse("site-settings", args=["site-d"]))
    body = page.content.decode()
    assert 'id="staff-note"' in body
    form = page.context["form"]
    assert form.fields["docker__workspace"].widget.attrs.get("disabled")
    assert form.fields["name"].widget.attrs.get("disabled") and form.fields["backend"].widget.attrs.get("disabled")
    assert not form.fields["docker__timeout"].widget.attrs.get("disabled")
    assert "Managed by platform staff." in form.fields["docker__docker_host"].help_text
    client.force_login(users["staff"])
    staff_form = client.get(reverse("site-settings", args=["site-d"])).context["form"]
    assert not any(f.widget.attrs.get("disabled") for f in staff_form.fields.values())


def test_site_admin_saves_what_is_theirs_and_staff_settings_are_kept(client, users, docker_site):
    client.force_login(users["owner"])
    before = row(docker_site)
    response = settings_post(client, docker_site, docker__timeout="45", docker__default_job_env='{"A": "1"}')
    assert response.status_code == 302, response.context["form"].errors
    site = Site.objects.get(pk=docker_site.pk)
    assert site.docker["timeout"] == 45 and site.docker["default_job_env"] == {"A": "1"}
    assert {k: v for k, v in site.docker.items() if k not in ("timeout", "default_job_env")} == \
        {k: v for k, v in before[3].items() if k not in ("timeout", "default_job_env")}
    assert row(docker_site)[:3] == before[:3]


@pytest.mark.parametrize("field,value,setting", [
    ("docker__workspace", "/etc", "docker.workspace"),
    ("docker__docker_host", "tcp://169.254.169.254:80", "docker.docker_host"),
    ("docker__allow_root", "on", "docker.allow_root"),
    ("docker__network", "host", "docker.network"),
    ("docker__default_python_path", "/bin/sh", "docker.default_python_path"),
    ("allowed_data_roots", "/", "allowed_data_roots"),
    ("name", "renamed", "name"),
    ("backend", "process", "backend"),
])
def test_tampered_staff_fields_are_refused_inline_with_the_api_message(client, users, docker_site, field, value, setting):
    client.force_login(users["owner"])
    before = row(docker_site)
    response = settings_post(client, docker_site, **{field: value})
    assert response.status_code == 200
    form = response.context["form"]
    assert form.errors[field] == [f"Only platform staff may change {setting}."]
    assert any(e.startswith("Only platform staff may change: ") and setting in e for e in form.non_field_errors())
    assert row(docker_site) == before


def test_staff_change_host_settings_from_the_page(client, users, docker_site, tmp_path):
    client.force_login(users["staff"])
    other = docker_workspace(tmp_path / "ws2")
    response = settings_post(client, docker_site, docker__workspace=str(other))
    assert response.status_code == 302, response.context["form"].errors
    assert Site.objects.get(pk=docker_site.pk).docker["workspace"] == str(other)
    refused = settings_post(client, docker_site, docker__network="host")
    assert refused.context["form"].errors["docker__network"] == [
        "'host' shares the host's network namespace and is never allowed without the site setting "
        "allow_host_network"]


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_operators_and_viewers_cannot_post_settings(client, users, docker_site, role):
    client.force_login(users[role])
    before = row(docker_site)
    assert client.post(reverse("site-settings", args=["site-d"]), {"docker__timeout": "5"}).status_code == 403
    assert row(docker_site) == before


@pytest.mark.parametrize("user,kwargs,message", [
    ("owner", {"privileged": True}, "Only platform staff may change docker_kwargs.privileged."),
    ("staff", {"privileged": True}, "docker_kwargs.privileged: 'privileged' weakens container isolation and is never allowed"),
    ("owner", {"read_only": True}, "Only platform staff may change docker_kwargs.read_only."),
])
def test_study_form_refuses_docker_kwargs_inline(client, users, docker_site, user, kwargs, message):
    client.force_login(users[user])
    response = client.post(reverse("studies", args=["site-d"]), {"name": "s1", "docker_kwargs": json.dumps(kwargs)})
    assert response.status_code == 200
    assert response.context["form"].errors["docker_kwargs"] == [message]
    assert not Study.objects.exists()
    ok = client.post(reverse("studies", args=["site-d"]), {"name": "s2", "docker_kwargs": '{"mem_limit": "1g"}'})
    assert ok.status_code == 302 and Study.objects.get(name="s2").docker_kwargs == {"mem_limit": "1g"}


def test_study_form_refuses_a_privileged_pod_template_inline(client, users):
    site = catalog.site_create(name="site-k", backend="kubernetes")
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    client.force_login(users["owner"])
    template = {"kind": "Pod", "spec": {"volumes": [{"name": "r", "hostPath": {"path": "/"}}]}}
    response = client.post(reverse("studies", args=["site-k"]), {"name": "s1", "pod_template": json.dumps(template)})
    errors = response.context["form"].errors["pod_template"]
    assert errors == ["Not allowed at the site's pod_security level 'restricted' (set by platform staff): "
                      "pod_template.spec.volumes[0].hostPath: hostPath volumes are not allowed"]
    assert not Study.objects.exists()


def test_dataset_form_refuses_the_workspace(client, users, docker_site):
    Site.objects.filter(pk=docker_site.pk).update(allowed_data_roots=[docker_site.docker["workspace"]])
    study = catalog.study_create(site=docker_site, name="s1")
    client.force_login(users["owner"])
    response = client.post(reverse("study-detail", args=["site-d", "s1"]),
                           {"action": "dataset", "name": "d1", "source": docker_site.docker["workspace"], "mode": "ro"})
    assert "is, contains or lies inside the site's workspace" in response.context["dataset_form"].errors["source"][0]
    assert not study.datasets.exists()


@pytest.fixture
def admin_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("root", password="pw-root-123"))
    return client


def admin_post(client, url, changes):
    page = client.get(url)
    form = page.context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data = {k: (json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else v)) for k, v in data.items()}
    for formset in page.context["inline_admin_formsets"]:
        fs = formset.formset
        data.update({f"{fs.prefix}-TOTAL_FORMS": "0", f"{fs.prefix}-INITIAL_FORMS": "0"})
    data.update(changes)
    return client.post(url, data)


@pytest.mark.parametrize("changes,field", [
    ({"docker": json.dumps({"network": "host"})}, "docker"),
    ({"docker": json.dumps({"workspace": "relative"})}, "docker"),
    ({"allowed_data_roots": json.dumps(["/"])}, "allowed_data_roots"),
    ({"kubernetes": json.dumps({"pod_security": "wide-open"})}, "kubernetes"),
])
def test_django_admin_refuses_an_invalid_site_config(admin_client, docker_site, changes, field):
    before = row(docker_site)
    response = admin_post(admin_client, reverse("admin:jobs_site_change", args=[docker_site.pk]), changes)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors[field]
    assert row(docker_site) == before


def test_django_admin_saves_a_valid_site_config_normalised(admin_client, docker_site):
    response = admin_post(admin_client, reverse("admin:jobs_site_change", args=[docker_site.pk]),
                          {"docker": json.dumps({**docker_site.docker, "timeout": 12})})
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert Site.objects.get(pk=docker_site.pk).docker["timeout"] == 12


def test_django_admin_refuses_privileged_study_kwargs(admin_client, docker_site):
    study = catalog.study_create(site=docker_site, name="s1")
    response = admin_post(admin_client, reverse("admin:jobs_study_change", args=[study.pk]),
                          {"docker_kwargs": json.dumps({"privileged": True})})
    assert response.status_code == 200
    assert "never allowed" in str(response.context["adminform"].form.errors["docker_kwargs"])
    assert Study.objects.get(pk=study.pk).docker_kwargs == {}


def test_django_admin_refuses_a_dataset_outside_the_roots(admin_client, docker_site):
    study = catalog.study_create(site=docker_site, name="s1")
    url = reverse("admin:jobs_study_change", args=[study.pk])
    prefix = admin_client.get(url).context["inline_admin_formsets"][0].formset.prefix
    response = admin_post(admin_client, url, {})  # TOTAL_FORMS 0: overridden below
    assert response.status_code == 302
    data = {f"{prefix}-TOTAL_FORMS": "1", f"{prefix}-0-name": "d1", f"{prefix}-0-source": "/etc", f"{prefix}-0-mode": "ro",
            f"{prefix}-0-study": str(study.pk)}
    response = admin_post(admin_client, url, data)
    assert response.status_code == 200
    errors = response.context["inline_admin_formsets"][0].formset.errors
    assert "not under the site's allowed data roots" in str(errors)
    assert not study.datasets.exists()
