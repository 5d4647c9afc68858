"""Pure manifest builders (launch-semantics.md §4.2-§4.7), compared with literal dicts."""

from __future__ import annotations

import base64

import pytest

from backends.base import DatasetSpec, InvalidJobSpec
from backends.kubernetes import manifests as km

UUID = "550e8400-e29b-41d4-a716-446655440000"


def test_job_label_prefixes_a_leading_digit_and_keeps_37_chars_for_a_uuid():
    assert km.job_label(UUID) == "j" + UUID
    assert len(km.job_label(UUID)) == 37


def test_job_label_cuts_to_63_before_stripping_trailing_hyphens():
    assert km.job_label("A_b.C-x") == "abc-x"
    assert km.job_label("a" * 62 + "-b") == "a" * 62


def test_site_label_hashes_so_names_that_normalise_alike_differ():
    assert km.site_label("site#1") != km.site_label("site1")
    assert km.site_label("site-1") == "site-1-f505dccd"
    assert km.site_label("1st") .startswith("s1st-")
    assert km.site_label("###").startswith("site-")
    assert len(km.site_label("x" * 200)) == 47


def test_pod_name_is_at_most_63_and_differs_per_site():
    assert km.pod_name(UUID, "site-1") == f"j{UUID}-site-1-f505dccd"
    long = km.pod_name("a" * 128, "a-very-long-site-name")
    assert len(long) <= 63 and long.endswith(km.site_label("a-very-long-site-name", 20))
    assert km.pod_name(UUID, "site-1") != km.pod_name(UUID, "site-2")


def test_container_name_is_capped_to_63():
    assert km.container_name(UUID) == f"container-j{UUID}"
    assert len(km.container_name("a" * 100)) == 63


def test_label_value_keeps_valid_values_and_hashes_invalid_ones():
    assert km.label_value("site-1") == "site-1"
    assert km.label_value("") == ""
    a, b = km.label_value("site#1"), km.label_value("site@1")
    assert a != b and km.LABEL_VALUE_RE.match(a) and km.LABEL_VALUE_RE.match(b)
    assert len(km.label_value("x" * 100)) <= 63


def test_secret_and_volume_names():
    assert km.startup_secret_name("site-1") == "nvflare-startup-site-1-f505dccd"
    assert km.credential_secret_name("p") == "nvflare-cred-p"
    assert km.dataset_volume_name("s", "d").startswith("data-s-d-")


@pytest.mark.parametrize("value,ok", [("500m", True), ("2", True), ("1.5", True), ("4Gi", True), ("1e3", True),
                                      ("-1", False), ("4GB", False), ("", False), ("one", False)])
def test_quantity(value, ok):
    assert km.is_quantity(value) is ok


def test_resources_request_defaults_to_limit_and_gpus_go_to_both():
    assert km.resources_for(cpu="2", memory="4Gi", memory_request="1Gi", gpus=1, ephemeral_storage="1Gi") == {
        "requests": {"ephemeral-storage": "1Gi", "cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"},
        "limits": {"ephemeral-storage": "1Gi", "cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
    }
    assert km.resources_for(cpu_request="500m", ephemeral_storage="2Gi") == {
        "requests": {"ephemeral-storage": "2Gi", "cpu": "500m"}, "limits": {"ephemeral-storage": "2Gi"}}


def inputs(**kw):
    base = dict(
        name="pod-1", namespace="jobs", container="container-j1", image="img:1",
        command=["/usr/bin/python", "-u", "-m", "mod", "-n", "j1"], labels={"app.kubernetes.io/managed-by": "x"},
        env={"STUDY": "s", "PYTHONPATH": "/ws/j1/app_site-1/custom", "EMPTY": ""},
        credential_env=["NVFLARE_JOB_AUTH_TOKEN"], credential_secret="nvflare-cred-pod-1",
        datasets=[DatasetSpec(study="s", name="train", source="pvc-train", mode="ro"),
                  DatasetSpec(study="s", name="out", source="pvc-out", mode="rw")],
        resources=km.resources_for(cpu="1", ephemeral_storage="1Gi"), image_pull_secrets=["regcred"],
        security_context={"runAsUser": 1000}, ephemeral_storage="1Gi", workspace_mount_path="/ws",
        startup_secret="nvflare-startup-x", pending_timeout=30,
    )
    base.update(kw)
    return km.PodInputs(**base)


def test_build_pod_literal():
    train, out = km.dataset_volume_name("s", "train"), km.dataset_volume_name("s", "out")
    assert km.build_pod(inputs()) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "pod-1", "namespace": "jobs", "labels": {"app.kubernetes.io/managed-by": "x"},
            "annotations": {"flare-launcher/main-container": "container-j1", "flare-launcher/pending-timeout": "30"},
        },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "container-j1",
                "image": "img:1",
                "command": ["/usr/bin/python"],
                "args": ["-u", "-m", "mod", "-n", "j1"],
                "imagePullPolicy": "Always",
                "volumeMounts": [
                    {"name": "workspace-job", "mountPath": "/ws"},
                    {"name": "startup-kit", "mountPath": "/ws/startup", "readOnly": True},
                    {"name": train, "mountPath": "/data/s/train", "readOnly": True},
                    {"name": out, "mountPath": "/data/s/out", "readOnly": False},
                ],
                "resources": {"requests": {"ephemeral-storage": "1Gi", "cpu": "1"},
                              "limits": {"ephemeral-storage": "1Gi", "cpu": "1"}},
                "env": [
                    {"name": "STUDY", "value": "s"},
                    {"name": "PYTHONPATH", "value": "/ws/j1/app_site-1/custom"},
                    {"name": "NVFLARE_JOB_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
                        "name": "nvflare-cred-pod-1", "key": "NVFLARE_JOB_AUTH_TOKEN"}}},
                ],
            }],
            "volumes": [
                {"name": "workspace-job", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "startup-kit", "secret": {"secretName": "nvflare-startup-x"}},
                {"name": train, "persistentVolumeClaim": {"claimName": "pvc-train"}},
                {"name": out, "persistentVolumeClaim": {"claimName": "pvc-out"}},
            ],
            "imagePullSecrets": [{"name": "regcred"}],
            "securityContext": {"runAsUser": 1000},
        },
    }


def test_build_pod_omits_empty_env_pull_secrets_and_security_context():
    pod = km.build_pod(inputs(env={}, credential_env=[], image_pull_secrets=[], security_context={},
                              pending_timeout=None))
    assert "env" not in pod["spec"]["containers"][0]
    assert "imagePullSecrets" not in pod["spec"] and "securityContext" not in pod["spec"]
    assert pod["metadata"]["annotations"]["flare-launcher/pending-timeout"] == "none"


def test_merge_named_keeps_template_order_and_launcher_items_win():
    template = [{"name": "a", "value": "t"}, {"name": "keep", "value": "t"}, {"value": "unnamed-t"}]
    launcher = [{"name": "b", "value": "l"}, {"name": "a", "value": "l"}, {"value": "unnamed-l"}]
    assert km.merge_named(template, launcher) == [
        {"name": "a", "value": "l"}, {"name": "keep", "value": "t"}, {"value": "unnamed-t"},
        {"name": "b", "value": "l"}, {"value": "unnamed-l"}]


def test_template_merge_launcher_owned_fields_win_and_template_extras_stay():
    built = km.build_pod(inputs())
    template = {
        "metadata": {"name": "evil", "namespace": "kube-system", "labels": {"team": "a", "app.kubernetes.io/managed-by": "evil"},
                     "annotations": {"note": "x"}},
        "spec": {
            "restartPolicy": "Always",
            "serviceAccountName": "jobs-sa",
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists"}],
            "securityContext": {"runAsUser": 0},
            "volumes": [{"name": "workspace-job", "hostPath": {"path": "/"}}, {"name": "shm", "emptyDir": {}}],
            "containers": [
                {"name": "sidecar", "image": "proxy:1"},
                {"name": "nvflare_job", "image": "ignored", "imagePullPolicy": "IfNotPresent",
                 "resources": {"limits": {"cpu": "64"}},
                 "env": [{"name": "NVFLARE_JOB_AUTH_TOKEN", "value": "plaintext"}, {"name": "TEAM", "value": "a"}],
                 "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]},
            ],
        },
    }
    pod, warnings = km.merge_pod_template(template, built)
    assert warnings == ["pod_template namespace 'kube-system' ignored: pods run in 'jobs'"]
    assert pod["metadata"]["name"] == "pod-1" and pod["metadata"]["namespace"] == "jobs"
    assert pod["metadata"]["labels"] == {"team": "a", "app.kubernetes.io/managed-by": "x"}
    assert pod["metadata"]["annotations"]["note"] == "x"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["serviceAccountName"] == "jobs-sa" and spec["nodeSelector"] == {"gpu": "a100"}
    assert spec["securityContext"] == {"runAsUser": 1000}
    assert spec["containers"][0] == {"name": "sidecar", "image": "proxy:1"}
    main = spec["containers"][1]
    b_main = built["spec"]["containers"][0]
    for key in ("name", "image", "command", "args", "resources"):
        assert main[key] == b_main[key]
    assert main["imagePullPolicy"] == "IfNotPresent"
    assert main["env"][0] == b_main["env"][2]  # the secretKeyRef replaced the plaintext template value
    assert main["env"][1] == {"name": "TEAM", "value": "a"}
    assert [m["name"] for m in main["volumeMounts"]][:2] == ["shm", "workspace-job"]
    assert spec["volumes"][0] == {"name": "workspace-job", "emptyDir": {"sizeLimit": "1Gi"}}
    assert spec["volumes"][1] == {"name": "shm", "emptyDir": {}}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]


def test_template_without_containers_gets_one_and_single_container_is_main():
    built = km.build_pod(inputs())
    pod, _ = km.merge_pod_template({"kind": "Pod"}, built)
    assert pod["spec"]["containers"][0]["name"] == "container-j1"
    pod, _ = km.merge_pod_template({"spec": {"containers": [{"name": "whatever", "workingDir": "/w"}]}}, built)
    assert pod["spec"]["containers"][0]["name"] == "container-j1"
    assert pod["spec"]["containers"][0]["workingDir"] == "/w"


@pytest.mark.parametrize("template,field", [
    ([], "study.pod_template"),
    ({"kind": "Deployment"}, "study.pod_template.kind"),
    ({"apiVersion": "v2"}, "study.pod_template.apiVersion"),
    ({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}, "study.pod_template.spec.containers"),
])
def test_template_errors(template, field):
    with pytest.raises(InvalidJobSpec) as err:
        km.merge_pod_template(template, km.build_pod(inputs()))
    assert err.value.field == field
    if field.endswith("containers"):
        assert "mark the main container" in str(err.value)


def test_secrets_literal():
    assert km.credential_secret(name="c", namespace="ns", labels={"l": "v"}, values={"K": "v"}) == {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "c", "namespace": "ns", "labels": {"l": "v"}}, "stringData": {"K": "v"}}
    assert km.startup_secret(name="s", namespace="ns", labels={}, files={"b.crt": b"B", "a.json": b"{}"}) == {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "s", "namespace": "ns", "labels": {}},
        "data": {"a.json": base64.b64encode(b"{}").decode(), "b.crt": base64.b64encode(b"B").decode()}}
    assert km.owner_reference_patch(pod="p", uid="u") == {
        "metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "u"}]}}
