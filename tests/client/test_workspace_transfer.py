"""FlareLauncherKubernetesJobLauncher against a real `manage.py serve` whose site is a Kubernetes site
on the loopback API server: the job is registered with the parent cell's real WorkspaceTransferManager
(nvflare), its token reaches the pod only through the credential Secret, the owner FQCN is the pod's
literal env, neither is stored or logged, and the record is dropped once the job ended or its launch
was refused (issue #16)."""

from __future__ import annotations

import base64
import json
import logging
from types import SimpleNamespace

import pytest

from backends.kubernetes import KubernetesSiteConfig
from backends.kubernetes import manifests as km
from flare_launcher_client import FlareLauncherJobLauncher, LauncherError
from flare_launcher_client.workspace_transfer import FlareLauncherKubernetesJobLauncher
from jobs.models import Job, JobEvent, Site
from jobs.services.tokens import token_create
from tests import kube_api_server as kube
from tests.api.live import launcher_server  # noqa: F401  (fixture)
from tests.backends.kube_fixtures import write_startup_kit

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded]
JOB = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@pytest.fixture
def kube_server():
    server = kube.KubeAPIServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def parent_cell():
    """The FL parent's CellNet cell (real, not started: registering a job needs no connection). One
    per module: CellNet keeps every cell's name for the life of the process."""
    from nvflare.fuel.f3.cellnet.cell import Cell

    return Cell(fqcn="site-1", root_url="tcp://127.0.0.1:1", secure=False, credentials={},
                create_internal_listener=False)


def fl_context(cell, job_args: dict, workspace: str):
    """A real FLContext holding what an NVFlare client parent puts there before a launch."""
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext

    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, SimpleNamespace(cell=cell), private=True, sticky=False)
    ctx.set_prop(ReservedKey.ARGS, SimpleNamespace(workspace=workspace, set=[]), private=True, sticky=False)
    ctx.set_prop(ReservedKey.JOB_PROCESS_ARGS, {k: tuple(v) for k, v in job_args.items()}, private=True,
                 sticky=False)
    return ctx


def k8s_site(kube_server, tmp_path, **settings) -> Site:
    config = {"config_file_path": kube_server.write_kubeconfig(str(tmp_path / "kubeconfig")),
              "startup_dir": write_startup_kit(tmp_path / "kit"), "request_timeout": 5, **settings}
    return Site.objects.create(name="site-1", backend="kubernetes",
                               kubernetes=KubernetesSiteConfig.from_dict(config).to_dict())


def nvflare_args(job_args, job_id: str, workspace: str) -> dict:
    args = job_args(job_id, workspace=workspace)
    args["exe_module"] = ["-m", "nvflare.private.fed.app.client.worker_process"]
    return args


def manager_of(cell):
    from nvflare.app_opt.job_launcher.workspace_cell_transfer import (
        WorkspaceTransferManager,
    )

    return WorkspaceTransferManager.get_or_create(cell)


@pytest.fixture
def site_token(monkeypatch):
    def issue(site: Site) -> None:
        monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", token_create(site=site)[1])
    return issue


def test_the_job_is_registered_and_its_token_reaches_only_the_credential_secret(
        launcher_server, kube_server, parent_cell, tmp_path, job_args, site_token, caplog):
    caplog.set_level(logging.DEBUG)
    site = k8s_site(kube_server, tmp_path, default_python_path="/usr/bin/python3")
    site_token(site)
    pod = km.pod_name(JOB, "site-1")
    kube_server.script(pod, [kube.running(), kube.succeeded()])  # the test is the kubelet here
    launcher = FlareLauncherKubernetesJobLauncher(url=launcher_server.url, site="site-1", timeout=30)
    ctx = fl_context(parent_cell, nvflare_args(job_args, JOB, str(tmp_path / "ws")), str(tmp_path / "ws"))
    meta = {"job_id": JOB, "launcher_spec": {"site-1": {"k8s": {"image": "local/nvflare:2.9"}}}}
    handle = launcher.launch_job(meta, ctx)
    assert handle.job["state"] == "running" and handle.poll() == 127

    record = manager_of(parent_cell).jobs[JOB]
    assert record.workspace_root == str(tmp_path / "ws")  # the parent's args.workspace, as NVFlare
    secret = kube_server.secret(km.credential_secret_name(pod))
    assert base64.b64decode(secret["data"]["NVFL_WORKSPACE_TRANSFER_TOKEN"]).decode() == record.transfer_token
    env = {e["name"]: e for e in kube_server.pod(pod)["spec"]["containers"][0]["env"]}
    assert env["NVFL_WORKSPACE_OWNER_FQCN"]["value"] == "site-1"  # the parent cell's FQCN
    assert env["NVFL_WORKSPACE_TRANSFER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == km.credential_secret_name(pod)
    token = record.transfer_token
    assert token not in json.dumps(kube_server.pod(pod))
    job = Job.objects.get(job_id=JOB)
    stored = json.dumps([job.request, job.job_args, job.spec, list(JobEvent.objects.values_list("message"))],
                        default=str)
    assert token not in stored and job.job_args["workspace_transfer_token"] == ["", "***"]
    assert token not in json.dumps(handle.job)  # never returned by the API either

    kube_server.advance(pod)  # the pod succeeds
    handle.wait()
    assert handle.poll() == 0
    assert JOB not in manager_of(parent_cell).jobs  # released at the terminal state
    assert token not in caplog.text and token not in launcher_server.output()


def test_a_refused_launch_drops_the_record(launcher_server, kube_server, parent_cell, tmp_path, job_args,
                                           site_token):
    site = k8s_site(kube_server, tmp_path)
    site.kubernetes = {**site.kubernetes, "startup_dir": None}
    site.save()
    site_token(site)
    launcher = FlareLauncherKubernetesJobLauncher(url=launcher_server.url, site="site-1", timeout=30)
    ctx = fl_context(parent_cell, nvflare_args(job_args, JOB, str(tmp_path)), str(tmp_path))
    with pytest.raises(LauncherError) as err:
        launcher.launch_job({"job_id": JOB, "launcher_spec": {"site-1": {"k8s": {"image": "i:1"}}}}, ctx)
    assert err.value.status == 400 and "kubernetes.startup_dir" in json.dumps(err.value.body)
    assert manager_of(parent_cell).jobs == {}
    assert kube_server.objects("pods") == [] and not Job.objects.exists()


def test_the_server_refuses_each_mismatch_of_launcher_and_site(launcher_server, kube_server, parent_cell, tmp_path,
                                                              job_args, site_token, process_site):
    # The Kubernetes launcher for a process site: the credentials are refused, nothing is launched.
    site_token(process_site)
    ctx = fl_context(parent_cell, nvflare_args(job_args, JOB, str(tmp_path)), str(tmp_path))
    k8s_launcher = FlareLauncherKubernetesJobLauncher(url=launcher_server.url, site="site-1", timeout=30)
    with pytest.raises(LauncherError) as err:
        k8s_launcher.launch_job({"job_id": JOB}, ctx)
    assert err.value.status == 400 and "job_args.workspace_transfer_token" in json.dumps(err.value.body)
    assert manager_of(parent_cell).jobs == {}
    # The plain launcher for a Kubernetes site: its pod could never fetch a workspace, so refused.
    process_site.delete()
    site_token(k8s_site(kube_server, tmp_path))
    plain = FlareLauncherJobLauncher(url=launcher_server.url, site="site-1", timeout=30)
    with pytest.raises(LauncherError) as err:
        plain.launch_job({"job_id": JOB, "launcher_spec": {"site-1": {"k8s": {"image": "i:1"}}}}, ctx)
    assert err.value.status == 400 and "job_args.workspace_transfer_token" in json.dumps(err.value.body)
    assert kube_server.objects("pods") == [] and not Job.objects.exists()
