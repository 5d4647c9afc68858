"""KubernetesSiteConfig parsing and KubernetesBackend.prepare() (pure: no API server needed)."""

from __future__ import annotations

import json

import pytest

from backends.base import DatasetSpec, InvalidJobSpec, StudyRuntime
from backends.kubernetes import KubernetesBackend, KubernetesSiteConfig
from backends.kubernetes import manifests as km
from tests.backends.kube_fixtures import (
    CREDENTIAL_VALUES,
    IMAGE,
    JOB_ID,
    OWNER_FQCN,
    SITE,
    TRANSFER_TOKEN,
    job_request,
)

BASE = f"job_meta.launcher_spec.{SITE}.k8s"


def backend(**config):
    """prepare() does not read the startup kit (launch() does), so any absolute path will do."""
    return KubernetesBackend(site=SITE, config=KubernetesSiteConfig.from_dict({"startup_dir": "/srv/kit", **config}))


def test_config_defaults_round_trip():
    cfg = KubernetesSiteConfig.from_dict({})
    assert cfg.to_dict() == {
        "config_file_path": None, "namespace": "default", "timeout": None, "pending_timeout": 120,
        "default_python_path": "/usr/local/bin/python", "security_context": {}, "ephemeral_storage": "1Gi",
        "workspace_mount_path": "/var/tmp/nvflare/workspace", "image_pull_secrets": [], "startup_dir": None,
        "parent_fqcn": None, "request_timeout": 10, "pod_security": "restricted",
    }
    assert KubernetesSiteConfig.from_dict(cfg.to_dict()) == cfg
    assert KubernetesSiteConfig.from_dict({"config_file_path": ""}).config_file_path is None


@pytest.mark.parametrize("data,field", [
    ({"pending_timeout": True}, "pending_timeout"),
    ({"pending_timeout": "60"}, "pending_timeout"),
    ({"pending_timeout": -1}, "pending_timeout"),
    ({"image_pull_secrets": "regcred"}, "image_pull_secrets"),
    ({"image_pull_secrets": ["ok", " "]}, "image_pull_secrets"),
    ({"namespace": "Bad_NS"}, "namespace"),
    ({"ephemeral_storage": ""}, "ephemeral_storage"),
    ({"ephemeral_storage": 5}, "ephemeral_storage"),
    ({"default_python_path": "  "}, "default_python_path"),
    ({"security_context": ["x"]}, "security_context"),
    ({"workspace_mount_path": "relative"}, "workspace_mount_path"),
    ({"timeout": 0}, "timeout"),
    ({"request_timeout": False}, "request_timeout"),
    ({"startup_dir": "rel/dir"}, "startup_dir"),
    ({"study_data_pvc_file_path": "/x"}, "study_data_pvc_file_path"),
])
def test_config_refuses(data, field):
    with pytest.raises(InvalidJobSpec) as err:
        KubernetesSiteConfig.from_dict(data)
    assert err.value.field == f"kubernetes.{field}"


def test_config_accepts_null_pending_timeout_and_floats():
    assert KubernetesSiteConfig.from_dict({"pending_timeout": None}).pending_timeout is None
    assert KubernetesSiteConfig.from_dict({"pending_timeout": 0.5}).pending_timeout == 0.5


def test_prepare_resolves_names_command_env_and_keeps_credentials_out_of_options():
    spec = backend(namespace="jobs").prepare(job_request())
    pod = spec.options["pod"]
    assert spec.name == f"j{JOB_ID}-{km.site_label(SITE, 20)}" == pod["metadata"]["name"]
    assert spec.command[0] == "/usr/local/bin/python"
    main = pod["spec"]["containers"][0]
    assert main["name"] == f"container-j{JOB_ID}"
    assert main["command"] == ["/usr/local/bin/python"]
    assert main["args"] == list(spec.command[1:])
    assert main["args"][:3] == ["-u", "-m", "nvflare.private.fed.app.client.worker_process"]
    assert "-t" not in main["args"] and "-d" not in main["args"]
    assert spec.credentials == {"NVFLARE_JOB_AUTH_TOKEN": "tok-Secret-7f3a",
                                "NVFLARE_JOB_TOKEN_SIGNATURE": "sig-Secret-91bc", "NVFLARE_JOB_SSID": "ssid-Secret-42",
                                "NVFL_WORKSPACE_TRANSFER_TOKEN": TRANSFER_TOKEN}
    assert spec.options["credential_secret"] == {"name": f"nvflare-cred-{spec.name}", "keys": list(spec.credentials)}
    assert spec.env == {"PYTHONPATH": f"/var/tmp/nvflare/workspace/{JOB_ID}/app_{SITE}/custom",
                        "NVFL_WORKSPACE_OWNER_FQCN": OWNER_FQCN}
    text = json.dumps({**spec.options, "env": spec.env, "command": spec.command, "labels": spec.labels})
    assert not any(value in text for value in CREDENTIAL_VALUES)
    assert json.dumps(spec.redacted()).count("Secret-") == 0
    assert pod["metadata"]["labels"] == spec.labels == {
        "app.kubernetes.io/managed-by": "flare-launcher", "flare-launcher/site": SITE, "flare-launcher/job": "42",
        "flare-launcher/nvflare-job-id": JOB_ID, "flare-launcher/study": ""}
    assert pod["metadata"]["namespace"] == "jobs"


def test_prepare_sanitises_label_values():
    b = KubernetesBackend(site="Site #1", config=KubernetesSiteConfig(startup_dir="/srv/kit"))
    req = job_request(job_meta={"launcher_spec": {"Site #1": {"k8s": {"image": IMAGE}}}})
    req = type(req)(**{**req.__dict__, "site": "Site #1", "job_pk": "pk with spaces"})
    labels = b.prepare(req).labels
    assert all(km.LABEL_VALUE_RE.match(v) for v in labels.values())
    assert labels["flare-launcher/site"] != "Site #1"


@pytest.mark.parametrize("key", ["privileged", "entrypoint", "shm_size", "host_network", "service_account",
                                 "pod_template", "namespace", "volumes"])
def test_every_unknown_job_key_is_refused_by_name(key):
    with pytest.raises(InvalidJobSpec) as err:
        backend().prepare(job_request(k8s={key: "x"}))
    assert err.value.field == f"{BASE}.{key}"
    assert key in str(err.value)


@pytest.mark.parametrize("key,value", [
    ("image", 5), ("image", ["a"]), ("image", False),
    ("cpu", "lots"), ("cpu", True), ("cpu", -1), ("cpu_request", "1 core"),
    ("memory", "4GB"), ("memory_request", {"a": 1}),
    ("num_of_gpus", -1), ("num_of_gpus", True), ("num_of_gpus", "1"),
    ("ephemeral_storage", 10), ("ephemeral_storage", "big"),
    ("python_path", "   "), ("python_path", 3),
    ("pending_timeout", True), ("pending_timeout", "5"), ("pending_timeout", -1),
])
def test_job_values_are_type_checked(key, value):
    with pytest.raises(InvalidJobSpec) as err:
        backend().prepare(job_request(k8s={key: value}))
    assert err.value.field == f"{BASE}.{key}"


def test_job_pending_timeout_may_only_shorten_the_site_value():
    assert backend().prepare(job_request(k8s={"pending_timeout": 30})).options["pending_timeout"] == 30
    assert backend().prepare(job_request(k8s={"pending_timeout": 0})).options["pending_timeout"] == 0
    with pytest.raises(InvalidJobSpec, match="may only shorten"):
        backend().prepare(job_request(k8s={"pending_timeout": 121}))
    with pytest.raises(InvalidJobSpec, match="may not disable"):
        backend().prepare(job_request(k8s={"pending_timeout": None}))
    unlimited = backend(pending_timeout=None)
    assert unlimited.prepare(job_request(k8s={"pending_timeout": None})).options["pending_timeout"] is None
    assert unlimited.prepare(job_request(k8s={"pending_timeout": 9999})).options["pending_timeout"] == 9999
    pod = backend().prepare(job_request(k8s={"pending_timeout": 30})).options["pod"]
    assert pod["metadata"]["annotations"]["flare-launcher/pending-timeout"] == "30"


def test_resources_from_job_keys_and_portable_spec():
    spec = backend(ephemeral_storage="3Gi").prepare(job_request(
        k8s={"cpu": 2, "memory": "8Gi", "memory_request": "4Gi", "num_of_gpus": 2, "ephemeral_storage": None}))
    assert spec.options["pod"]["spec"]["containers"][0]["resources"] == {
        "requests": {"ephemeral-storage": "3Gi", "cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "2"},
        "limits": {"ephemeral-storage": "3Gi", "cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "2"}}
    assert spec.options["pod"]["spec"]["volumes"][0] == {"name": "workspace-job", "emptyDir": {"sizeLimit": "3Gi"}}
    meta = {"launcher_spec": {SITE: {"k8s": {"image": IMAGE}}},
            "resource_spec": {SITE: {"num_of_cpus": 4, "memory": "16Gi", "num_of_gpus": 1}}}
    res = backend().prepare(job_request(job_meta=meta)).options["pod"]["spec"]["containers"][0]["resources"]
    assert res == {"requests": {"ephemeral-storage": "1Gi", "cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                   "limits": {"ephemeral-storage": "1Gi", "cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}}


@pytest.mark.parametrize("portable,native", [("num_of_cpus", "cpu_request"), ("memory", "memory"),
                                             ("num_of_gpus", "num_of_gpus")])
def test_portable_and_native_resource_keys_conflict(portable, native):
    value = {"num_of_cpus": 2, "memory": "1Gi", "num_of_gpus": 1}[portable]
    meta = {"launcher_spec": {SITE: {"k8s": {"image": IMAGE, native: {"memory": "1Gi"}.get(native, 1)}}},
            "resource_spec": {SITE: {portable: value}}}
    with pytest.raises(InvalidJobSpec, match="conflicts"):
        backend().prepare(job_request(job_meta=meta))


def test_image_precedence_job_then_study_then_error():
    study = StudyRuntime(name="s1", image="site/approved:1")
    assert backend().prepare(job_request(study=study)).image == IMAGE
    no_image = {"launcher_spec": {SITE: {"k8s": {}}}}
    assert backend().prepare(job_request(study=study, job_meta=no_image)).image == "site/approved:1"
    with pytest.raises(InvalidJobSpec, match="no job image was specified"):
        backend().prepare(job_request(job_meta=no_image))


def test_job_may_choose_image_and_python_path_as_with_nvflare_launchers():
    # BYOC for these is authorised by the FL server at deploy time; the launcher takes the job's choice.
    meta = {"launcher_spec": {SITE: {"k8s": {"image": "job/own:2", "python_path": "/opt/py"}}}}
    spec = backend().prepare(job_request(job_meta=meta, study=StudyRuntime(name="s1", image="site/approved:1"), byoc=False))
    assert spec.image == "job/own:2" and spec.command[0] == "/opt/py"


def test_study_datasets_env_and_template():
    study = StudyRuntime(
        name="s1",
        datasets=(DatasetSpec(study="s1", name="train", source="pvc-train", mode="ro"),
                  DatasetSpec(study="s1", name="out", source="pvc-out", mode="rw")),
        env={"STUDY_MODE": "fast"},
        pod_template={"metadata": {"namespace": "other"},
                      "spec": {"nodeSelector": {"pool": "gpu"},
                               "containers": [{"name": "nvflare_job", "env": [{"name": "STUDY_MODE", "value": "old"}]},
                                              {"name": "sidecar", "image": "proxy:1"}]}},
    )
    spec = backend().prepare(job_request(study=study))
    pod = spec.options["pod"]
    assert spec.options["warnings"] == ["pod_template namespace 'other' ignored: pods run in 'default'"]
    assert pod["metadata"]["namespace"] == "default"
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    main = pod["spec"]["containers"][0]
    assert main["image"] == IMAGE and main["env"][0] == {"name": "STUDY_MODE", "value": "fast"}
    mounts = {m["mountPath"]: m["readOnly"] for m in main["volumeMounts"] if m["mountPath"].startswith("/data")}
    assert mounts == {"/data/s1/train": True, "/data/s1/out": False}
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["pvc-train", "pvc-out"]
    assert spec.labels["flare-launcher/study"] == "s1"


def test_a_command_override_replaces_the_job_containers_command_even_under_a_template():
    """JobRequest.command (the site probe) is the main container's command/args, whatever a study's
    pod_template says about them (launcher-owned); sidecars are left alone."""
    study = StudyRuntime(name="s1", pod_template={"spec": {"containers": [
        {"name": "nvflare_job", "command": ["/bin/evil"], "args": ["x"]},
        {"name": "sidecar", "image": "proxy:1", "command": ["proxy"]}]}})
    spec = backend().prepare(job_request(study=study, command=("sh", "-c", "echo probe")))
    main, sidecar = spec.options["pod"]["spec"]["containers"]
    assert (main["command"], main["args"]) == (["sh"], ["-c", "echo probe"])
    assert sidecar["command"] == ["proxy"]
    assert spec.command == ("sh", "-c", "echo probe")


def test_study_errors():
    with pytest.raises(InvalidJobSpec, match="launcher-owned"):
        backend().prepare(job_request(study=StudyRuntime(name="s1", env={"NVFLARE_JOB_SSID": "x"})))
    bad_claim = StudyRuntime(name="s1", datasets=(DatasetSpec(study="s1", name="d", source="/host/path", mode="ro"),))
    with pytest.raises(InvalidJobSpec, match="PersistentVolumeClaim"):
        backend().prepare(job_request(study=bad_claim))
    typo = StudyRuntime(name="s1", pod_template={"spec": {"nodeSelectorr": {}}})
    with pytest.raises(InvalidJobSpec) as err:
        backend().prepare(job_request(study=typo))
    assert err.value.field == "study.s1.pod_template"


def test_security_context_and_pull_secrets_from_site():
    spec = backend(security_context={"runAsNonRoot": True}, image_pull_secrets=["regcred"]).prepare(job_request())
    assert spec.options["pod"]["spec"]["securityContext"] == {"runAsNonRoot": True}
    assert spec.options["pod"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
