"""KubernetesBackend against the loopback API server: launch, inspect, terminate, logs, cleanup,
API errors and check_connection. Objects are read back from the server's store. What every backend
does alike is in test_contract.py."""

from __future__ import annotations

import base64
import json
import os

import pytest

from backends.base import BackendError, Handle, JobState, StillRunning
from backends.kubernetes import KubernetesBackend, KubernetesSiteConfig
from backends.kubernetes import manifests as km
from tests import kube_api_server as kube
from tests.backends.kube_fixtures import (  # noqa: F401 - fixtures
    CREDENTIAL_VALUES, JOB_ID, OWNER_FQCN, SITE, TRANSFER_TOKEN, backend, clock, job_request, kube_server,
    make_backend,
)

LABELS = {"app.kubernetes.io/managed-by": "flare-launcher", "flare-launcher/site": SITE,
          "flare-launcher/job": "42", "flare-launcher/nvflare-job-id": JOB_ID, "flare-launcher/study": ""}


def launched(backend, **kw):
    spec = backend.prepare(job_request(**kw))
    return spec, backend.launch(spec)


def test_launch_creates_exactly_the_prepared_pod_and_credential_secret(kube_server, backend):
    spec, handle = launched(backend)
    assert handle == Handle("kubernetes", spec.name)
    pod = kube_server.pod(spec.name)
    sent = {k: v for k, v in pod["metadata"].items() if k not in ("uid", "resourceVersion", "creationTimestamp")}
    assert sent == spec.options["pod"]["metadata"]
    assert pod["spec"] == spec.options["pod"]["spec"]
    assert pod["metadata"]["labels"] == LABELS
    secret = kube_server.secret(f"nvflare-cred-{spec.name}")
    assert secret["metadata"]["labels"] == LABELS
    assert secret["type"] == "Opaque"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "NVFLARE_JOB_AUTH_TOKEN": "tok-Secret-7f3a", "NVFLARE_JOB_TOKEN_SIGNATURE": "sig-Secret-91bc",
        "NVFLARE_JOB_SSID": "ssid-Secret-42", "NVFL_WORKSPACE_TRANSFER_TOKEN": TRANSFER_TOKEN}
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": spec.name, "uid": pod["metadata"]["uid"]}]


def test_no_credential_value_anywhere_in_the_pod(kube_server, backend):
    spec, _ = launched(backend)
    text = json.dumps(kube_server.pod(spec.name))
    assert not any(value in text for value in CREDENTIAL_VALUES)
    env = kube_server.pod(spec.name)["spec"]["containers"][0]["env"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert refs == {name: {"name": f"nvflare-cred-{spec.name}", "key": name}
                    for name in ("NVFLARE_JOB_AUTH_TOKEN", "NVFLARE_JOB_TOKEN_SIGNATURE", "NVFLARE_JOB_SSID",
                                 "NVFL_WORKSPACE_TRANSFER_TOKEN")}
    literal = {e["name"]: e["value"] for e in env if "value" in e}
    assert literal["NVFL_WORKSPACE_OWNER_FQCN"] == OWNER_FQCN  # NVFlare's literal env: not a secret


def test_startup_kit_secret_is_upserted_from_certificate_files_only(kube_server, make_backend, tmp_path):
    startup = tmp_path / "startup"
    startup.mkdir()
    for name, text in {"client.crt": "C", "client.key": "K", "rootCA.pem": "R", "fed_client.json": "{}",
                       "start.sh": "#!/bin/sh", "readme.txt": "x"}.items():
        (startup / name).write_text(text)
    (startup / "nested").mkdir()
    (startup / "nested" / "deep.crt").write_text("no")
    os.symlink(startup / "client.crt", startup / "link.crt")
    backend = make_backend(startup_dir=str(startup))
    spec, _ = launched(backend)
    secret = kube_server.secret(km.startup_secret_name(SITE))
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "client.crt": "C", "client.key": "K", "rootCA.pem": "R", "fed_client.json": "{}"}
    assert secret["metadata"]["labels"] == LABELS
    # A second launch replaces it (409 -> update) with the current files.
    (startup / "client.crt").write_text("C2")
    launched(backend, job_id="second-job", job_pk="43")
    secret = kube_server.secret(km.startup_secret_name(SITE))
    assert base64.b64decode(secret["data"]["client.crt"]) == b"C2"
    assert kube_server.count("PUT", "/secrets/" + km.startup_secret_name(SITE)) == 1


def test_launch_adopts_an_existing_pod_of_the_same_job(kube_server, backend):
    spec, first = launched(backend)
    uid = kube_server.pod(spec.name)["metadata"]["uid"]
    again = backend.launch(spec)
    assert again == first
    assert kube_server.pod(spec.name)["metadata"]["uid"] == uid
    assert len(kube_server.objects("pods")) == 1


def test_launch_refuses_a_name_taken_by_another_job(kube_server, backend):
    spec, _ = launched(backend)
    other = backend.prepare(job_request(job_pk="99"))
    with pytest.raises(BackendError, match="belongs to another job"):
        backend.launch(other)


def test_failed_pod_create_deletes_the_credential_secret(kube_server, backend):
    kube_server.denied.add(("create", "pods"))
    spec = backend.prepare(job_request())
    with pytest.raises(BackendError) as err:
        backend.launch(spec)
    assert not err.value.retryable
    assert "may not create pods" in str(err.value) and "'create'" in str(err.value)
    assert kube_server.secret(f"nvflare-cred-{spec.name}") is None
    assert kube_server.objects("pods") == []


def test_403_on_secret_names_the_missing_verb_and_resource(kube_server, backend):
    kube_server.denied.add(("create", "secrets"))
    with pytest.raises(BackendError, match="may not create secrets"):
        launched(backend)


def test_401_is_a_clear_permanent_error(kube_server, backend):
    kube_server.unauthorized = True
    with pytest.raises(BackendError) as err:
        launched(backend)
    assert "401 Unauthorized" in str(err.value) and not err.value.retryable


def test_unreachable_api_is_retryable(kube_server, backend):
    kube_server.stop()
    with pytest.raises(BackendError) as err:
        launched(backend)
    assert err.value.retryable
    with pytest.raises(BackendError) as err:
        backend.inspect(Handle("kubernetes", "gone"))
    assert err.value.retryable


@pytest.mark.parametrize("status,state,code", [
    (kube.pending(), JobState.STARTING, None),
    (kube.running(), JobState.RUNNING, None),
    (kube.succeeded(), JobState.SUCCEEDED, 0),
    (kube.failed(1), JobState.FAILED, 9),
    (kube.failed(137, "OOMKilled"), JobState.FAILED, 9),
    (kube.failed(101), JobState.FAILED, 101),
    (kube.failed(102), JobState.FAILED, 102),
    (kube.failed(103), JobState.FAILED, 103),
])
def test_phase_to_state_and_return_code(kube_server, backend, status, state, code):
    spec, handle = launched(backend)
    kube_server.set_logs(spec.name, "line1\nline2\n")
    kube_server.set_status(spec.name, status)
    obs = backend.inspect(handle)
    assert (obs.state, obs.return_code, obs.job_pk) == (state, code, "42")
    if state.is_terminal:
        assert obs.logs_tail == "line1\nline2\n"
        assert kube_server.secret(f"nvflare-cred-{spec.name}") is None  # dropped at first terminal sight
        assert kube_server.pod(spec.name) is not None  # completed pods stay until cleanup
        assert obs.exit_code == status["containerStatuses"][0]["state"]["terminated"]["exitCode"]
    else:
        assert kube_server.secret(f"nvflare-cred-{spec.name}") is not None


def test_oomkilled_reason_is_reported(kube_server, backend):
    spec, handle = launched(backend)
    kube_server.set_status(spec.name, kube.failed(137, "OOMKilled"))
    assert backend.inspect(handle).reason == "OOMKilled"


def test_vanished_pod_is_lost(kube_server, backend):
    spec, handle = launched(backend)
    with kube_server.cond:
        del kube_server.store["pods"][("default", spec.name)]
    obs = backend.inspect(handle)
    assert (obs.state, obs.reason, obs.return_code) == (JobState.LOST, "vanished", 9)
    assert kube_server.secret(f"nvflare-cred-{spec.name}") is None


def test_terminal_answer_comes_from_the_pod_not_from_memory(kube_server, backend, make_backend):
    # The first terminal answer sticks on the job row (tests/jobs/test_lifecycle.py::
    # test_terminal_state_is_sticky); the backend reads it from the pod, so a new object agrees.
    spec, handle = launched(backend)
    kube_server.set_status(spec.name, kube.succeeded())
    assert backend.inspect(handle).return_code == 0
    assert make_backend().inspect(handle).return_code == 0


def test_terminate_running_pod_aborts_with_grace_zero_and_deletes_the_secret(kube_server, backend):
    spec, handle = launched(backend)
    kube_server.script(spec.name, [kube.running()])
    kube_server.set_logs(spec.name, "working\n")
    obs = backend.terminate(handle)
    assert (obs.state, obs.return_code, obs.logs_tail) == (JobState.ABORTED, 9, "working\n")
    assert ("pods", spec.name, 0) in kube_server.deletions
    assert kube_server.pod(spec.name) is None
    assert kube_server.secret(f"nvflare-cred-{spec.name}") is None
    again = backend.terminate(handle)  # twice: the pod is gone (404), same answer
    assert (again.state, again.return_code) == (JobState.ABORTED, 9)
    # What the job row knows (terminate was requested) turns the missing pod into aborted.
    assert backend.inspect(handle, terminate_requested=True).state == JobState.ABORTED
    assert backend.inspect(handle).state == JobState.LOST


def test_terminate_keeps_the_code_of_a_pod_that_already_ended(kube_server, backend):
    spec, handle = launched(backend)
    kube_server.set_status(spec.name, kube.failed(103))
    assert backend.terminate(handle).return_code == 103
    spec2, handle2 = launched(backend, job_id="job-two", job_pk="2")
    kube_server.set_status(spec2.name, kube.succeeded())
    assert backend.terminate(handle2).return_code == 0


def test_logs_tail_and_missing_pod(kube_server, backend):
    spec, handle = launched(backend)
    kube_server.set_logs(spec.name, "".join(f"l{i}\n" for i in range(10)))
    assert backend.logs(handle, tail=3) == "l7\nl8\nl9\n"
    assert backend.logs(Handle("kubernetes", "nope")) == ""


def test_cleanup_deletes_a_finished_pod_and_refuses_a_running_one(kube_server, backend):
    spec, handle = launched(backend)
    kube_server.set_status(spec.name, kube.running())
    with pytest.raises(StillRunning, match="terminate it"):
        backend.cleanup(handle)
    assert kube_server.pod(spec.name) is not None
    kube_server.set_status(spec.name, kube.succeeded())
    backend.inspect(handle)
    backend.cleanup(handle)
    assert kube_server.pod(spec.name) is None
    assert kube_server.secret(f"nvflare-cred-{spec.name}") is None
    backend.cleanup(handle)  # missing is fine


def test_list_managed_finds_this_sites_pods_by_label(kube_server, backend, make_backend):
    spec, _ = launched(backend)
    kube_server.set_status(spec.name, kube.running())
    other_site = KubernetesBackend(site="site-2", config=backend.config)
    other_req = job_request()
    other_req = type(other_req)(**{**other_req.__dict__, "site": "site-2",
                                   "job_meta": {"launcher_spec": {"site-2": {"k8s": {"image": "x:1"}}}}})
    other_site.launch(other_site.prepare(other_req))
    found = backend.list_managed()
    assert [(o.ref, o.state, o.job_pk) for o in found] == [(spec.name, JobState.RUNNING, "42")]
    assert "labelSelector" in kube_server.requests[-1][2]


def test_check_connection_all_green(kube_server, backend):
    results = backend.check_connection()
    assert all(r.ok for r in results), results
    names = [r.name for r in results]
    assert names[:2] == ["api", "namespace"]
    assert "rbac get pods/log" in names and "rbac patch secrets" in names and "rbac list events" in names
    assert "v1.31.0-loopback" in results[0].detail


def test_check_connection_names_a_denied_permission(kube_server, backend):
    kube_server.denied.add(("delete", "secrets"))
    kube_server.denied.add(("get", "pods/log"))
    bad = {r.name: r.detail for r in backend.check_connection() if not r.ok}
    assert set(bad) == {"rbac delete secrets", "rbac get pods/log"}
    assert "delete secrets" in bad["rbac delete secrets"] and "kubernetes-rbac.yaml" in bad["rbac delete secrets"]


def test_check_connection_unreachable_and_unauthorized(kube_server, backend):
    kube_server.unauthorized = True
    results = backend.check_connection()
    assert [(r.name, r.ok) for r in results] == [("api", False)] and "401" in results[0].detail
    kube_server.stop()
    results = backend.check_connection()
    assert not results[0].ok and "unreachable" in results[0].detail


def test_missing_kubeconfig_is_a_clear_error(tmp_path):
    b = KubernetesBackend(site=SITE, config=KubernetesSiteConfig.from_dict(
        {"config_file_path": str(tmp_path / "missing")}))
    with pytest.raises(BackendError, match="cannot load Kubernetes credentials"):
        b.inspect(Handle("kubernetes", "x"))
