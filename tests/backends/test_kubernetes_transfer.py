"""What a real NVFlare pod needs before it can start (issue #16): the workspace-transfer token and
owner FQCN its parent registered (launch-semantics.md §4.5), and the startup-kit Secret, which
must exist before any pod that mounts it (§4.4)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from backends.base import InvalidJobSpec
from backends.kubernetes import manifests as km
from tests.backends.kube_fixtures import (  # noqa: F401 - fixtures
    OWNER_FQCN,
    SITE,
    TRANSFER_TOKEN,
    backend,
    client_args,
    clock,
    job_request,
    kube_server,
    make_backend,
)


def without(*names):
    args = client_args()
    for name in names:
        args.pop(name)
    return replace(job_request(), job_args=args)


def test_an_nvflare_job_without_the_transfer_token_is_refused_naming_the_field(backend):
    with pytest.raises(InvalidJobSpec) as err:
        backend.prepare(without("workspace_transfer_token"))
    assert err.value.field == "job_args.workspace_transfer_token"
    assert "FlareLauncherKubernetesJobLauncher" in err.value.reason


@pytest.mark.parametrize("name,value", [
    ("workspace_transfer_token", "short"), ("workspace_transfer_token", "has space and-is-long-enough-ok"),
    ("workspace_transfer_token", 12345678901234567890), ("workspace_owner_fqcn", "-leading"),
    ("workspace_owner_fqcn", "site 1"), ("workspace_owner_fqcn", "x" * 300),
])
def test_malformed_transfer_values_are_refused_without_echoing_them(backend, name, value):
    args = {**client_args(), name: ["", value]}
    with pytest.raises(InvalidJobSpec) as err:
        backend.prepare(replace(job_request(), job_args=args))
    assert err.value.field == f"job_args.{name}"
    assert str(value) not in str(err.value)


def test_the_owner_fqcn_falls_back_to_the_sites_parent_fqcn_then_the_site_name(make_backend):
    request = without("workspace_owner_fqcn")
    assert make_backend(parent_fqcn="site-1.parent").prepare(request).env["NVFL_WORKSPACE_OWNER_FQCN"] == "site-1.parent"
    assert make_backend().prepare(request).env["NVFL_WORKSPACE_OWNER_FQCN"] == SITE
    sent = replace(job_request(), job_args={**client_args(), "workspace_owner_fqcn": ["", "site-1.cp"]})
    assert make_backend(parent_fqcn="site-1.parent").prepare(sent).env["NVFL_WORKSPACE_OWNER_FQCN"] == "site-1.cp"


def test_the_token_rides_the_credential_secret_and_never_the_stored_spec(kube_server, backend):
    spec = backend.prepare(job_request())
    assert spec.credentials["NVFL_WORKSPACE_TRANSFER_TOKEN"] == TRANSFER_TOKEN
    assert TRANSFER_TOKEN not in json.dumps(spec.redacted())
    backend.launch(spec)
    assert TRANSFER_TOKEN not in json.dumps(kube_server.pod(spec.name))
    data = kube_server.secret(km.credential_secret_name(spec.name))["data"]
    assert base64.b64decode(data["NVFL_WORKSPACE_TRANSFER_TOKEN"]).decode() == TRANSFER_TOKEN
    env = {e["name"]: e for e in kube_server.pod(spec.name)["spec"]["containers"][0]["env"]}
    assert env["NVFL_WORKSPACE_OWNER_FQCN"] == {"name": "NVFL_WORKSPACE_OWNER_FQCN", "value": OWNER_FQCN}


def test_a_site_without_startup_dir_refuses_nvflare_jobs_naming_the_setting(make_backend, kube_server):
    backend = make_backend(startup_dir=None)
    with pytest.raises(InvalidJobSpec) as err:
        backend.prepare(job_request())
    assert err.value.field == "kubernetes.startup_dir"
    assert kube_server.objects("pods") == []


def test_the_launchers_probe_runs_without_startup_kit_or_token_and_mounts_no_secret(make_backend, kube_server):
    backend = make_backend(startup_dir=None)
    probe = replace(without("workspace_transfer_token"), command=("/bin/sh", "-c", "echo ok"))
    spec = backend.prepare(probe)
    backend.launch(spec)
    pod = kube_server.pod(spec.name)
    assert [v["name"] for v in pod["spec"]["volumes"]] == [km.WORKSPACE_VOLUME]
    assert kube_server.secret(km.startup_secret_name(SITE)) is None


def test_the_startup_secret_is_written_before_the_pod_that_mounts_it(kube_server, backend):
    spec = backend.prepare(job_request())
    backend.launch(spec)
    writes = [(m, p) for m, p, _ in kube_server.requests if m in ("POST", "PUT")]
    startup = km.startup_secret_name(SITE)
    assert writes.index(("POST", "/api/v1/namespaces/default/secrets")) < writes.index(
        ("POST", "/api/v1/namespaces/default/pods"))
    assert kube_server.secret(startup) is not None
    volumes = {v["name"]: v for v in kube_server.pod(spec.name)["spec"]["volumes"]}
    assert volumes[km.STARTUP_VOLUME] == {"name": km.STARTUP_VOLUME, "secret": {"secretName": startup}}


@pytest.mark.parametrize("kit", ["missing", "empty", "scripts-only"])
def test_an_unusable_startup_kit_fails_the_launch_before_any_pod_or_secret(kube_server, make_backend, tmp_path, kit):
    directory = tmp_path / "kit"
    if kit != "missing":
        directory.mkdir()
    if kit == "scripts-only":
        (directory / "start.sh").write_text("#!/bin/sh\n")
    backend = make_backend(startup_dir=str(directory))
    spec = backend.prepare(job_request())
    with pytest.raises(InvalidJobSpec) as err:
        backend.launch(spec)
    assert err.value.field == "kubernetes.startup_dir"
    assert kube_server.objects("pods") == [] and kube_server.objects("secrets") == []
