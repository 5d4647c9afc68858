"""Who may change which settings, over the API (jobs/services/policy.py): everything that widens what
a job reaches on the host is platform staff's; a site admin gets 403 naming the fields and nothing
is saved; operators, viewers and site tokens change nothing. Plus the checks everyone is held to:
docker_kwargs and pod_template refused at save, dataset sources kept off the workspace."""

from __future__ import annotations

import copy
import os

import pytest

from backends import config_class
from jobs.models import Role, Site, SiteMembership, Study
from jobs.services import catalog

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

ROLES = ("staff", "owner", "operator", "viewer", "token")


@pytest.fixture
def host(tmp_path):
    """Host directories: two site workspaces, a data root (which also holds a workspace) and an outside dir."""
    paths = {name: tmp_path / name for name in ("ws-d", "ws-other", "data", "outside", "data/ws-inside", "data/a")}
    for path in paths.values():
        path.mkdir(parents=True, exist_ok=True)
    for ws in ("ws-d", "ws-other"):  # real workspaces: a save runs the launch-time checks (site_checks)
        for sub in ("startup", "local"):
            (paths[ws] / sub).mkdir()
        os.chown(paths[ws], 1000, 1000)  # the job user (the owner) is not root
    return paths


@pytest.fixture
def sites(db, users, host):
    docker = Site.objects.create(name="site-d", backend="docker", allowed_data_roots=[str(host["data"])],
                                 docker=config_class("docker").from_dict({"workspace": str(host["ws-d"])}).to_dict())
    k8s = Site.objects.create(name="site-k", backend="kubernetes", kubernetes=config_class("kubernetes").from_dict({}).to_dict())
    for site in (docker, k8s):
        for user, role in (("owner", Role.ADMIN), ("operator", Role.OPERATOR), ("viewer", Role.VIEWER)):
            SiteMembership.objects.create(site=site, user=users[user], role=role)
    return {"docker": docker, "kubernetes": k8s}


@pytest.fixture
def client_for(as_user, site_token, sites):
    def make(role, site="docker"):
        return site_token(sites[site]) if role == "token" else as_user(role)
    return make


def row(site):
    site = Site.objects.filter(pk=site.pk).first()
    return site and (site.name, site.backend, site.allowed_data_roots, site.docker, site.kubernetes, site.process)


def block(site, **changes):
    return {**copy.deepcopy(getattr(site, site.backend)), **changes}


# action name -> (site, body builder, status for staff, staff-only fields a site admin is told about)
PATCHES = {
    "data roots": ("docker", lambda s, h: {"allowed_data_roots": ["/srv"]}, 200, ["allowed_data_roots"]),
    "root user": ("docker", lambda s, h: {"docker": block(s, allow_root=True, user="0:0")}, 200,
                  ["docker.allow_root", "docker.user"]),
    "host network": ("docker", lambda s, h: {"docker": block(s, network="host")}, 400, ["docker.network"]),
    "engine endpoint": ("docker", lambda s, h: {"docker": block(s, docker_host="tcp://127.0.0.1:9")}, 200,
                        ["docker.docker_host"]),
    "other workspace": ("docker", lambda s, h: {"docker": block(s, workspace=str(h["ws-other"]))}, 200,
                        ["docker.workspace"]),
    "python path": ("docker", lambda s, h: {"docker": block(s, default_python_path="/bin/sh")}, 200,
                    ["docker.default_python_path"]),
    "site kwargs": ("docker", lambda s, h: {"docker": block(s, default_job_container_kwargs={"read_only": False})}, 200,
                    ["docker.default_job_container_kwargs"]),
    "allow switch": ("docker", lambda s, h: {"docker": block(s, allow_host_ipc=True)}, 200, ["docker.allow_host_ipc"]),
    "backend": ("docker", lambda s, h: {"backend": "process", "process": {
                "default_python_path": "/bin/sh", "allow_root": True}}, 200,
                ["backend", "process.allow_root", "process.default_python_path"]),
    "rename": ("docker", lambda s, h: {"name": "site-renamed"}, 200, ["name"]),
    "kubeconfig": ("kubernetes", lambda s, h: {"kubernetes": block(s, config_file_path="/tmp/evil-kubeconfig")}, 200,
                   ["kubernetes.config_file_path"]),
    "startup kit": ("kubernetes", lambda s, h: {"kubernetes": block(s, startup_dir="/etc")}, 200,
                    ["kubernetes.startup_dir"]),
    "namespace": ("kubernetes", lambda s, h: {"kubernetes": block(s, namespace="kube-system")}, 200,
                  ["kubernetes.namespace"]),
    "pod security": ("kubernetes", lambda s, h: {"kubernetes": block(s, pod_security="privileged")}, 200,
                     ["kubernetes.pod_security"]),
    "security context": ("kubernetes", lambda s, h: {"kubernetes": block(s, security_context={"runAsUser": 0})}, 200,
                         ["kubernetes.security_context"]),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", PATCHES)
def test_host_level_settings_are_staff_only(action, role, sites, host, client_for):
    kind, body, staff_status, fields = PATCHES[action]
    site = sites[kind]
    before = row(site)
    response = client_for(role, kind).patch(f"/api/v1/sites/{site.name}/", body(site, host), format="json")
    expected = {"staff": staff_status, "owner": 403, "operator": 403, "viewer": 403, "token": 403}[role]
    assert response.status_code == expected, response.json()
    if role == "owner":
        assert response.json() == {"detail": f"Only platform staff may change: {', '.join(sorted(fields))}."}
    if response.status_code != 200:
        assert row(site) == before  # nothing half-written
    if role == "staff" and staff_status == 400:
        assert set(response.json()) == set(fields) and "never allowed" in str(response.json())


@pytest.mark.parametrize("role,expected", [("staff", 200), ("owner", 200), ("operator", 403), ("viewer", 403),
                                           ("token", 403)])
def test_site_admins_may_change_job_timeouts_and_environment(role, expected, sites, client_for):
    site = sites["docker"]
    body = {"docker": block(site, timeout=45, default_job_env={"LOG_LEVEL": "debug"})}
    response = client_for(role).patch("/api/v1/sites/site-d/", body, format="json")
    assert response.status_code == expected
    if expected == 200:
        assert Site.objects.get(pk=site.pk).docker["timeout"] == 45
        assert Site.objects.get(pk=site.pk).docker["workspace"] == site.docker["workspace"]
    # a partial block resets the other settings to defaults: that is a staff-only change
    reset = client_for(role).patch("/api/v1/sites/site-d/", {"docker": {"timeout": 50}}, format="json")
    assert reset.status_code == (400 if role == "staff" else 403)
    if role == "staff":  # allowed, but it empties docker.workspace: refused at save (jobs.services.site_checks)
        assert "no workspace configured" in str(reset.json()["docker.workspace"])


@pytest.mark.parametrize("role,expected", [("staff", 204), ("owner", 403), ("operator", 403), ("viewer", 403),
                                           ("token", 403)])
def test_only_staff_delete_sites(role, expected, sites, client_for):
    response = client_for(role).delete("/api/v1/sites/site-d/")
    assert response.status_code == expected
    assert Site.objects.filter(name="site-d").exists() is (expected != 204)


DOCKER_KWARGS = {  # body -> status for (staff, owner)
    "privileged": ({"privileged": True}, 400, 403),
    "pid host": ({"pid_mode": "host"}, 400, 403),
    "read only": ({"read_only": True}, 201, 403),  # harmless but not a resource limit: staff's
    "memory": ({"mem_limit": "2g", "shm_size": "1g", "pids_limit": 512}, 201, 201),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("case", DOCKER_KWARGS)
def test_study_docker_kwargs_are_checked_at_save(case, role, sites, client_for):
    kwargs, staff_status, owner_status = DOCKER_KWARGS[case]
    response = client_for(role).post("/api/v1/sites/site-d/studies/", {"name": "s1", "docker_kwargs": kwargs},
                                     format="json")
    expected = {"staff": staff_status, "owner": owner_status}.get(role, 403)
    assert response.status_code == expected, response.json()
    assert Study.objects.filter(name="s1").exists() is (expected == 201)
    if expected == 400:
        assert "weakens container isolation" in response.json()["docker_kwargs"][0] or \
            "host namespace" in response.json()["docker_kwargs"][0]
    if role == "owner" and expected == 403:
        assert response.json()["detail"].startswith("Only platform staff may change: docker_kwargs.")


def test_site_admin_edits_around_staff_set_docker_kwargs(sites, client_for):
    catalog.study_create(site=sites["docker"], name="s1", docker_kwargs={"read_only": True})
    owner = client_for("owner")
    assert owner.patch("/api/v1/sites/site-d/studies/s1/", {"description": "ok"}, format="json").status_code == 200
    kept = owner.patch("/api/v1/sites/site-d/studies/s1/", {"docker_kwargs": {"read_only": True, "mem_limit": "1g"}},
                       format="json")
    assert kept.status_code == 200
    dropped = owner.patch("/api/v1/sites/site-d/studies/s1/", {"docker_kwargs": {}}, format="json")
    assert dropped.status_code == 403 and "docker_kwargs.read_only" in dropped.json()["detail"]
    assert Study.objects.get(name="s1").docker_kwargs == {"read_only": True, "mem_limit": "1g"}


POD_TEMPLATES = {
    "privileged": ({"containers": [{"name": "nvflare_job", "securityContext": {"privileged": True}}]},
                   "spec.containers[0].securityContext.privileged"),
    "hostPID": ({"hostPID": True}, "spec.hostPID"),
    "hostNetwork": ({"hostNetwork": True}, "spec.hostNetwork"),
    "hostIPC": ({"hostIPC": True}, "spec.hostIPC"),
    "hostPath": ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "spec.volumes[0].hostPath"),
    "hostPort": ({"containers": [{"name": "c", "ports": [{"containerPort": 1, "hostPort": 1}]}]},
                 "spec.containers[0].ports[0].hostPort"),
    "escalation": ({"containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": True}}]},
                   "spec.containers[0].securityContext.allowPrivilegeEscalation"),
    "capability": ({"containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
                   "spec.containers[0].securityContext.capabilities.add[0]"),
    "root": ({"securityContext": {"runAsUser": 0}}, "spec.securityContext.runAsUser"),
    "seccomp": ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "spec.securityContext.seccompProfile.type"),
    "sysctl": ({"securityContext": {"sysctls": [{"name": "kernel.core_pattern", "value": "|/x"}]}},
               "spec.securityContext.sysctls[0].name"),
    "procMount": ({"containers": [{"name": "c", "securityContext": {"procMount": "Unmasked"}}]},
                  "spec.containers[0].securityContext.procMount"),
    "serviceAccount": ({"serviceAccountName": "admin"}, "spec.serviceAccountName"),
    "secret": ({"volumes": [{"name": "s", "secret": {"secretName": "nvflare-cred-other"}}]}, "spec.volumes[0].secret"),
}


@pytest.mark.parametrize("role", ("staff", "owner"))
@pytest.mark.parametrize("case", POD_TEMPLATES)
def test_pod_template_must_meet_the_sites_pod_security_level(case, role, sites, client_for):
    spec, path = POD_TEMPLATES[case]
    body = {"name": "s1", "pod_template": {"kind": "Pod", "spec": spec}}
    response = client_for(role, "kubernetes").post("/api/v1/sites/site-k/studies/", body, format="json")
    assert response.status_code == 400, response.json()
    assert any(f"pod_template.{path}:" in message for message in response.json()["pod_template"])
    assert not Study.objects.exists()


def test_staff_may_lower_the_pod_security_level(sites, client_for):
    staff = client_for("staff", "kubernetes")
    site = sites["kubernetes"]
    assert staff.patch("/api/v1/sites/site-k/", {"kubernetes": block(site, pod_security="privileged")},
                       format="json").status_code == 200
    body = {"name": "s1", "pod_template": {"kind": "Pod", "spec": {"hostPID": True}}}
    assert client_for("owner", "kubernetes").post("/api/v1/sites/site-k/studies/", body, format="json").status_code == 201


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("source,expected", [("outside", 400), ("ws-d", 400), ("data/ws-inside", 400), ("data/a", 201)])
def test_dataset_sources_stay_inside_the_roots_and_off_the_workspace(source, expected, role, sites, host, client_for):
    catalog.study_create(site=sites["docker"], name="s1")
    if source == "data/ws-inside":  # staff point the workspace inside the data root: still never a dataset
        Site.objects.filter(pk=sites["docker"].pk).update(docker={**sites["docker"].docker, "workspace": str(host[source])})
    response = client_for(role).post("/api/v1/sites/site-d/studies/s1/datasets/",
                                     {"name": "d1", "source": str(host[source])}, format="json")
    status = expected if role in ("staff", "owner") else 403
    assert response.status_code == status, response.json()
    if status == 400:
        assert "source" in response.json()


@pytest.fixture
def chatty_endpoint():
    """A local HTTP server answering every request with a 500 and an 8 KB body (an SSRF target)."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"METADATA-SECRET-" * 500
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_test_connection_does_not_echo_remote_bodies(sites, client_for, chatty_endpoint):
    Site.objects.filter(pk=sites["docker"].pk).update(docker={**sites["docker"].docker, "docker_host": chatty_endpoint,
                                                              "timeout": 5})
    response = client_for("owner").post("/api/v1/sites/site-d/test/", {"datasets": []}, format="json")
    assert response.status_code == 200
    details = {r["name"]: r["detail"] for r in response.json()}
    assert "unreachable" in details["docker daemon"]
    assert all(len(detail) <= 200 for detail in details.values())
    assert response.content.count(b"METADATA-SECRET") <= 12


RUNTIME = """\
format_version: 2
studies:
  s1:
    container: {{image: "img:1"}}
    docker_kwargs: {kwargs}
"""


@pytest.mark.parametrize("role,kwargs,expected", [
    ("owner", "{read_only: true}", 400), ("owner", "{privileged: true}", 400), ("owner", "{mem_limit: 1g}", 200),
    ("staff", "{read_only: true}", 200), ("staff", "{privileged: true}", 400),
])
def test_study_runtime_import_applies_the_same_rules(role, kwargs, expected, sites, client_for):
    response = client_for(role).put("/api/v1/sites/site-d/study-runtime/", RUNTIME.format(kwargs=kwargs),
                                    content_type="application/yaml")
    assert response.status_code == expected, response.content
    assert Study.objects.filter(name="s1").exists() is (expected == 200)
    if role == "owner" and expected == 400:
        assert any(key.startswith("s1.docker_kwargs") for key in response.json()), response.json()


def test_launch_rechecks_dataset_sources_against_the_workspace(process_site, as_user, data_root, job_args):
    from tests.api.conftest import launch_body

    study = catalog.study_create(site=process_site, name="s1")
    catalog.dataset_create(study=study, name="d1", source=str(data_root / "cohort-a"))
    # staff later move the workspace onto the dataset: launching must not hand the job its workspace
    Site.objects.filter(pk=process_site.pk).update(process={**process_site.process, "workspace": str(data_root)})
    body = launch_body("job-1", job_args("job-1"), job_meta={"job_id": "job-1", "study": "s1"})
    response = as_user("operator").post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 400, response.json()
    assert "lies inside the site's workspace" in response.json()["study.s1.datasets.d1.source"][0]
