"""A real NVFlare job in a Kubernetes "pod" through FLARE Launcher (issue #16).

A real NVFlare POC (server + site-1, 127.0.0.1 only) whose site-1 parent loads
FlareLauncherKubernetesJobLauncher (local/flare__p_resources.json, token from its environment); a
real `manage.py serve` whose site-1 is a Kubernetes site on the loopback API server in kubelet mode
(tests/kube_kubelet.py), which runs each pod's container as a local process. The job, submitted
with `nvflare job submit`, starts in the pod with an empty workspace, downloads it from the real
parent over CellNet with the transfer token the client registered, trains, publishes its results
back and exits: the pod ends Succeeded, FLARE Launcher's job `succeeded` with rc 0, NVFlare's
`FINISHED:COMPLETED`.

The site's workspace_mount_path is the parent's workspace path (as NVFlare assumes on Kubernetes,
where the parent runs in a pod at that path): the kubelet maps it to the pod's own directory, so the
job sees only what it downloaded.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from backends.kubernetes import KubernetesSiteConfig
from backends.kubernetes import manifests as km
from jobs.models import Job, JobState, Site
from jobs.services.tokens import token_create
from tests.api.live import ROOT, LiveServer
from tests.kube_api_server import KubeAPIServer
from tests.kubernetes_nvflare.poc import Federation
from tests.util import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.embedded, pytest.mark.kubernetes]
JOB_DIR = Path(__file__).parent / "job"


@pytest.fixture
def stack(tmp_path):
    fed = Federation(tmp_path / "fl", ["site-1"])
    kube = KubeAPIServer().start()
    kubelet = kube.enable_kubelet(str(tmp_path / "kubelet"))
    server = None
    try:
        site_ws = fed.workspace("site-1")
        site = Site.objects.create(name="site-1", backend="kubernetes", kubernetes=KubernetesSiteConfig.from_dict({
            "config_file_path": kube.write_kubeconfig(str(tmp_path / "kubeconfig")),
            "startup_dir": str(site_ws / "startup"), "workspace_mount_path": str(site_ws),
            "default_python_path": sys.executable, "pending_timeout": 30, "timeout": 60,
        }).to_dict())
        _, token = token_create(site=site)
        server = LiveServer(tmp_path)
        fed.replace_launcher("site-1", {
            "id": "flare_launcher", "path": "flare_launcher_client.workspace_transfer.FlareLauncherKubernetesJobLauncher",
            "args": {"url": server.url, "site": "site-1", "timeout": 60}})
        fed.start("server")
        fed.start("site-1", env={"FLARE_LAUNCHER_TOKEN": token, "PYTHONPATH": str(ROOT)})
        fed.wait_connected()
        yield fed, kube, kubelet, server, token
    finally:
        fed.stop()
        kube.stop()
        if server is not None:
            server.stop()


def test_a_real_nvflare_job_downloads_trains_and_publishes_from_a_pod(stack):
    fed, kube, kubelet, server, token = stack
    job_id = fed.submit(JOB_DIR)
    pod = km.pod_name(job_id, "site-1")

    def diagnose() -> str:
        return (f"\n--- site-1\n{fed.log('site-1')}\n--- pod\n{kube.pod_logs.get(pod, '')[-4000:]}"
                f"\n--- launcher\n{server.output()}")

    try:
        job = wait_until(lambda: (j := Job.objects.filter(job_id=job_id).first()) is not None and j.is_terminal and j,
                         timeout=120, interval=0.5, message="FLARE Launcher's job to end")
        assert (job.state, job.return_code) == (JobState.SUCCEEDED, 0)
        wait_until(lambda: fed.status(job_id) == "FINISHED:COMPLETED", timeout=60, interval=1,
                   message="NVFlare to report the job FINISHED:COMPLETED")
    except AssertionError as exc:
        raise AssertionError(f"{exc}{diagnose()}") from None

    phases = [o["status"].get("phase") for _, r, _, t, o in kube.changes if r == "pods" and o["metadata"]["name"] == pod]
    assert phases[0] == "Pending" and "Running" in phases and phases[-1] == "Succeeded", phases
    # The pod started empty and downloaded its workspace from the parent (local/ and the job's app).
    pod_ws = Path(kubelet.host_path(pod, str(fed.workspace("site-1"))))
    assert (pod_ws / job_id / "app_site-1" / "config" / "config_fed_client.json").is_file()
    assert (pod_ws / "local" / "resources.json.default").is_file()
    # It trained, and published its results back into the parent's workspace.
    pod_log = kube.pod_logs[pod]
    assert "finished processing task" in pod_log and f"upload_results SUCCESS job={job_id}" in pod_log, diagnose()
    assert f"publish_results extracted job={job_id}" in fed.log("site-1")
    assert "finished processing task" in (fed.workspace("site-1") / job_id / "log.txt").read_text()
    # The transfer token (read back from the credential Secret as created) and the site token never
    # showed: not in the pod object, its log, the launcher's records or its output.
    transfer = next(base64.b64decode(o["data"]["NVFL_WORKSPACE_TRANSFER_TOKEN"]).decode()
                    for _, r, _, t, o in kube.changes
                    if r == "secrets" and t == "ADDED" and o["metadata"]["name"] == km.credential_secret_name(pod))
    pod_objects = json.dumps([o for _, r, _, _, o in kube.changes if r == "pods"])
    records = json.dumps([job.request, job.job_args, job.spec, job.logs_tail, job.detail,
                          list(job.events.values_list("message", flat=True))], default=str)
    for secret in (transfer, token):
        assert secret not in pod_objects and secret not in pod_log and secret not in records
        assert secret not in server.output()
