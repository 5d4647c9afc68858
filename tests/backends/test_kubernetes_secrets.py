"""A study's secret_env and secret_mounts on Kubernetes (launch-semantics.md §4.4, §4.5): rendered as
NVFlare does (secretKeyRef after the credentials; read-only Secret volumes with their items after the
datasets), checked at launch, and read by a real process in kubelet mode."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest

from backends.base import (
    DatasetSpec,
    InvalidJobSpec,
    JobState,
    SecretEnvRef,
    SecretMount,
    StudyRuntime,
)
from backends.kubernetes import manifests as km
from tests.backends.kube_fixtures import (  # noqa: F401 - fixtures
    job_request,
    make_backend,
)
from tests.kube_api_server import KubeAPIServer
from tests.util import wait_until


def study(**kw) -> StudyRuntime:
    values = {"name": "s1", "env": {"MODE": "fast"},
              "datasets": (DatasetSpec(study="s1", name="train", source="train-pvc", mode="ro"),),
              "secret_env": (SecretEnvRef(name="DB_PASSWORD", source="db-creds", key="password"),),
              "secret_mounts": (SecretMount(study="s1", name="tls", source="tls-bundle", mount_path="/etc/tls",
                                            items=(("tls.crt", "certs/server.crt"),)),
                                SecretMount(study="s1", name="all", source="api-keys", mount_path="/etc/keys"))}
    return StudyRuntime(**{**values, **kw})


@pytest.fixture
def kube_server(tmp_path):
    server = KubeAPIServer().start()
    server.enable_kubelet(str(tmp_path / "kubelet"))
    yield server
    server.stop()


@pytest.fixture
def clock():
    import time

    return time.time


def test_secret_env_and_mounts_are_rendered_in_nvflares_order(make_backend):
    pod = make_backend().prepare(job_request(study=study())).options["pod"]
    main = pod["spec"]["containers"][0]
    refs = [e for e in main["env"] if "valueFrom" in e]
    assert [e["name"] for e in refs][-1] == "DB_PASSWORD"  # after the credential refs
    assert refs[-1]["valueFrom"] == {"secretKeyRef": {"name": "db-creds", "key": "password"}}
    assert [e["name"] for e in refs][:-1] == ["NVFLARE_JOB_AUTH_TOKEN", "NVFLARE_JOB_TOKEN_SIGNATURE",
                                              "NVFLARE_JOB_SSID", "NVFL_WORKSPACE_TRANSFER_TOKEN"]
    tls, keys = km.secret_volume_name("s1", "tls"), km.secret_volume_name("s1", "all")
    assert pod["spec"]["volumes"][-3:] == [
        {"name": km.dataset_volume_name("s1", "train"), "persistentVolumeClaim": {"claimName": "train-pvc"}},
        {"name": tls, "secret": {"secretName": "tls-bundle", "items": [{"key": "tls.crt", "path": "certs/server.crt"}]}},
        {"name": keys, "secret": {"secretName": "api-keys"}},
    ]
    assert main["volumeMounts"][-2:] == [{"name": tls, "mountPath": "/etc/tls", "readOnly": True},
                                         {"name": keys, "mountPath": "/etc/keys", "readOnly": True}]


@pytest.mark.parametrize("change,field", [
    ({"secret_env": (SecretEnvRef(name="NVFLARE_JOB_AUTH_TOKEN", source="x", key="k"),)},
     "study.s1.secret_env.NVFLARE_JOB_AUTH_TOKEN"),
    ({"secret_env": (SecretEnvRef(name="MODE", source="x", key="k"),)}, "study.s1.secret_env.MODE"),
    ({"secret_env": (SecretEnvRef(name="A", source="nvflare-cred-other-pod", key="NVFLARE_JOB_AUTH_TOKEN"),)},
     "study.s1.secret_env.A.source"),
    ({"secret_env": (SecretEnvRef(name="A", source="Bad_Name", key="k"),)}, "study.s1.secret_env.A.source"),
    ({"secret_env": (SecretEnvRef(name="A", source="ok", key="k/../x"),)}, "study.s1.secret_env.A.key"),
    ({"secret_mounts": (SecretMount(study="s1", name="m", source="nvflare-startup-site-2-1234abcd",
                                    mount_path="/etc/m"),)}, "study.s1.secret_mounts.m.source"),
    ({"secret_mounts": (SecretMount(study="s1", name="m", source="ok", mount_path="relative"),)},
     "study.s1.secret_mounts.m.mount_path"),
    ({"secret_mounts": (SecretMount(study="s1", name="m", source="ok",
                                    mount_path="/var/tmp/nvflare/workspace/startup"),)},
     "study.s1.secret_mounts.m.mount_path"),
    ({"secret_mounts": (SecretMount(study="s1", name="m", source="ok", mount_path="/etc/m",
                                    items=(("k", "../escape"),)),)}, "study.s1.secret_mounts.m.items.k"),
])
def test_secret_refs_are_checked_at_launch(make_backend, change, field):
    with pytest.raises(InvalidJobSpec) as err:
        make_backend().prepare(job_request(study=study(**change)))
    assert err.value.field == field


def test_a_pod_reads_its_secret_env_and_projected_secret_files(kube_server, make_backend):
    for name, data in {"db-creds": {"password": b"s3cret"}, "tls-bundle": {"tls.crt": b"CERT", "tls.key": b"KEY"},
                       "api-keys": {"a": b"1", "b": b"2"}}.items():
        kube_server.add_secret(name, data)
    backend = make_backend()
    script = ("import os, sys\n"
              "assert os.environ['DB_PASSWORD'] == 's3cret'\n"
              "assert open('/etc/tls/certs/server.crt').read() == 'CERT'\n"
              "assert not os.path.exists('/etc/tls/tls.key')\n"  # only the listed items
              "assert sorted(os.listdir('/etc/keys')) == ['a', 'b']\n")
    spec = backend.prepare(replace(job_request(study=study(datasets=())), command=(sys.executable, "-c", script)))
    handle = backend.launch(spec)
    obs = wait_until(lambda: (o := backend.inspect(handle)).state.is_terminal and o, timeout=30, message="the pod")
    assert (obs.state, obs.return_code) == (JobState.SUCCEEDED, 0), backend.logs(handle)
