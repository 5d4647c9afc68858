"""Pod Security Standards check of study pod_templates (backends/kubernetes/pod_security.py): literal dicts,
every violation named with its path; the launch-time check in prepare()."""

from __future__ import annotations

import pytest

from backends.base import InvalidJobSpec, StudyRuntime
from backends.kubernetes import KubernetesBackend, KubernetesSiteConfig
from backends.kubernetes import manifests as km
from backends.kubernetes import pod_security as pss
from tests.backends.kube_fixtures import SITE, job_request

MUST_SET = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


def pod(spec=None, **meta):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec or {}}


def container(**sc):
    return {"name": "nvflare_job", "securityContext": sc}


# (template, level at which it is first allowed, the violation path)
CASES = [
    (pod({"containers": [container(privileged=True)]}), "privileged",
     "pod_template.spec.containers[0].securityContext.privileged"),
    (pod({"hostPID": True}), "privileged", "pod_template.spec.hostPID"),
    (pod({"hostIPC": True}), "privileged", "pod_template.spec.hostIPC"),
    (pod({"hostNetwork": True}), "privileged", "pod_template.spec.hostNetwork"),
    (pod({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}), "privileged",
     "pod_template.spec.volumes[0].hostPath"),
    (pod({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}), "privileged",
     "pod_template.spec.containers[0].ports[0].hostPort"),
    (pod({"containers": [container(capabilities={"add": ["SYS_ADMIN"]})]}), "privileged",
     "pod_template.spec.containers[0].securityContext.capabilities.add[0]"),
    (pod({"initContainers": [container(procMount="Unmasked")]}), "privileged",
     "pod_template.spec.initContainers[0].securityContext.procMount"),
    (pod({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}), "privileged",
     "pod_template.spec.securityContext.sysctls[0].name"),
    (pod({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}), "privileged",
     "pod_template.spec.securityContext.seccompProfile.type"),
    (pod({"containers": [container(seLinuxOptions={"type": "spc_t"})]}), "privileged",
     "pod_template.spec.containers[0].securityContext.seLinuxOptions.type"),
    (pod({"containers": [container(appArmorProfile={"type": "Unconfined"})]}), "privileged",
     "pod_template.spec.containers[0].securityContext.appArmorProfile.type"),
    (pod(annotations={"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}), "privileged",
     "pod_template.metadata.annotations.container.apparmor.security.beta.kubernetes.io/c"),
    (pod({"securityContext": {"windowsOptions": {"hostProcess": True}}}), "privileged",
     "pod_template.spec.securityContext.windowsOptions.hostProcess"),
    # Allowed by baseline, refused by restricted:
    (pod({"volumes": [{"name": "n", "nfs": {"server": "x", "path": "/"}}]}), "baseline",
     "pod_template.spec.volumes[0].nfs"),
    (pod({"containers": [container(allowPrivilegeEscalation=True)]}), "baseline",
     "pod_template.spec.containers[0].securityContext.allowPrivilegeEscalation"),
    (pod({"containers": [container(capabilities={"add": ["CHOWN"]})]}), "baseline",
     "pod_template.spec.containers[0].securityContext.capabilities.add[0]"),
    (pod({"securityContext": {"runAsNonRoot": False}}), "baseline", "pod_template.spec.securityContext.runAsNonRoot"),
    (pod({"containers": [container(runAsUser=0)]}), "baseline",
     "pod_template.spec.containers[0].securityContext.runAsUser"),
]


@pytest.mark.parametrize("template,allowed_from,path", CASES, ids=[c[2].split("pod_template.")[1] for c in CASES])
def test_each_violation_is_named_with_its_path(template, allowed_from, path):
    found = pss.pod_violations(template, "restricted", require_set=False)
    assert [v for v in found if v.startswith(path + ":")], found
    baseline = pss.pod_violations(template, "baseline", require_set=False)
    assert bool(baseline) is (allowed_from == "privileged"), baseline
    assert pss.pod_violations(template, "privileged") == []


TEMPLATE_ONLY = [  # allowed by the standard, refused in a study template below "privileged"
    (pod({"serviceAccountName": "cluster-admin-sa"}), "pod_template.spec.serviceAccountName"),
    (pod({"nodeName": "control-plane-1"}), "pod_template.spec.nodeName"),
    (pod({"volumes": [{"name": "s", "secret": {"secretName": "nvflare-cred-other-job"}}]}),
     "pod_template.spec.volumes[0].secret"),
    (pod({"volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "kit"}}]}}]}),
     "pod_template.spec.volumes[0].projected.sources[0].secret"),
    (pod({"containers": [{"name": "c", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}]}]}),
     "pod_template.spec.containers[0].env[0].valueFrom.secretKeyRef"),
    (pod({"initContainers": [{"name": "c", "envFrom": [{"secretRef": {"name": "x"}}]}]}),
     "pod_template.spec.initContainers[0].envFrom[0].secretRef"),
]


@pytest.mark.parametrize("template,path", TEMPLATE_ONLY, ids=[c[1].split("spec.")[1] for c in TEMPLATE_ONLY])
def test_launcher_rules_for_templates(template, path):
    assert not any(v.startswith(path + ":") for v in pss.pod_violations(template, "restricted"))  # the standard allows it
    for level in ("restricted", "baseline"):
        assert [v for v in pss.template_violations(template, level) if v.startswith(path + ":")]
    assert pss.template_violations(template, "privileged") == []


def test_a_harmless_template_passes_restricted_and_the_allowed_options_are_kept():
    template = pod({"nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
                    "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}],
                    "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
                    "containers": [container(capabilities={"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                             runAsUser=1000, allowPrivilegeEscalation=False)]})
    assert pss.template_violations(template, "restricted") == []


def test_a_full_pod_must_set_the_restricted_fields():
    bare = pod({"containers": [{"name": "c"}]})
    assert pss.pod_violations(bare, "restricted", require_set=False) == []
    assert sorted(v.split(":")[0] for v in pss.pod_violations(bare, "restricted")) == [
        "pod_template.spec.containers[0].securityContext.allowPrivilegeEscalation",
        "pod_template.spec.containers[0].securityContext.capabilities.drop",
        "pod_template.spec.containers[0].securityContext.runAsNonRoot",
        "pod_template.spec.containers[0].securityContext.seccompProfile.type",
    ]
    assert pss.pod_violations(pod({"containers": [container(**MUST_SET)]}), "restricted") == []
    # pod-level runAsNonRoot / seccompProfile cover every container
    pod_level = pod({"securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [container(allowPrivilegeEscalation=False, capabilities={"drop": ["ALL"]})]})
    assert pss.pod_violations(pod_level, "restricted") == []


def test_the_built_in_pod_meets_baseline_but_not_restricted_without_container_settings():
    """The launcher's own pod (default site security_context) has no host access at all (baseline
    passes), but sets no container securityContext, so the restricted "must be set" controls fail
    on a whole-pod reading. That is why templates are judged on what they set (require_set=False)."""
    built = km.build_pod(km.PodInputs(name="p", namespace="default", container="c", image="img:1",
                                      command=["/usr/bin/python"], labels={}, startup_secret="s",
                                      datasets=()))
    assert pss.pod_violations(built, "baseline", prefix="pod") == []
    assert pss.pod_violations(built, "restricted", prefix="pod", require_set=False) == []
    assert {v.split(":")[0].rsplit(".", 1)[-1] for v in pss.pod_violations(built, "restricted", prefix="pod")} == {
        "allowPrivilegeEscalation", "drop", "runAsNonRoot", "type"}


def test_unknown_level_is_refused():
    with pytest.raises(ValueError):
        pss.pod_violations(pod(), "lenient")


def test_site_pod_security_setting_and_the_launch_time_check():
    assert KubernetesSiteConfig.from_dict({}).pod_security == "restricted"
    with pytest.raises(InvalidJobSpec) as err:
        KubernetesSiteConfig.from_dict({"pod_security": "anything"})
    assert err.value.field == "kubernetes.pod_security"
    study = StudyRuntime(name="s1", pod_template=pod({"hostPID": True,
                                                      "volumes": [{"name": "r", "hostPath": {"path": "/"}}]}))
    backend = KubernetesBackend(site=SITE, config=KubernetesSiteConfig.from_dict({"startup_dir": "/srv/kit"}))
    with pytest.raises(InvalidJobSpec) as err:
        backend.prepare(job_request(study=study))
    assert err.value.field == "study.s1.pod_template"
    assert "study.s1.pod_template.spec.hostPID" in err.value.reason
    assert "study.s1.pod_template.spec.volumes[0].hostPath" in err.value.reason
    privileged = KubernetesBackend(site=SITE, config=KubernetesSiteConfig.from_dict(
        {"pod_security": "privileged", "startup_dir": "/srv/kit"}))
    assert privileged.prepare(job_request(study=study)).options["pod"]["spec"]["hostPID"] is True
