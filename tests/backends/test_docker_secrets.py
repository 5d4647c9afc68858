"""Study secret_env and secret_mounts on Docker (launch-semantics.md §3.3-§3.4, §5.2): values come
from the launcher's environment, only from variables staff allowed, and never reach the stored
spec; secret mounts are read-only binds confined like dataset sources."""

from __future__ import annotations

import json
import os

import pytest

from backends.base import InvalidJobSpec, SecretEnvRef, SecretMount, StudyRuntime
from backends.docker import DockerSiteConfig
from backends.docker.specs import CONTAINER_ROOT, create_kwargs
from tests.util import wait_until

NO_DAEMON = "unix:///nonexistent/docker.sock"
VALUE = "hunter2-s3cr3t-value"


def study(**fields) -> StudyRuntime:
    return StudyRuntime(name="cancer", **fields)


@pytest.fixture
def secrets_dir(docker_data_root):
    path = docker_data_root / "secrets"
    path.mkdir()
    (path / "token").write_text("mounted-secret\n")
    return path


def test_secret_env_comes_from_the_launcher_env_and_is_redacted(make_docker_backend, docker_request, monkeypatch):
    monkeypatch.setenv("HOSPITAL_DB_PASSWORD", VALUE)
    backend = make_docker_backend(docker_host=NO_DAEMON, secret_env_sources=["HOSPITAL_DB_PASSWORD"])
    spec = backend.prepare(docker_request(study=study(
        env={"PLAIN": "1"}, secret_env=(SecretEnvRef(name="DB_PASSWORD", source="HOSPITAL_DB_PASSWORD", key="x"),))))
    assert create_kwargs(spec)["environment"]["DB_PASSWORD"] == VALUE
    assert create_kwargs(spec)["environment"]["PLAIN"] == "1"
    assert "DB_PASSWORD" not in spec.env  # only with the credentials, joined at create
    stored = json.dumps(spec.redacted())
    assert VALUE not in stored and '"DB_PASSWORD": "***"' in stored


def test_user_and_home_still_win_over_a_secret_as_in_nvflare(make_docker_backend, docker_request, monkeypatch):
    monkeypatch.setenv("SITE_SECRET", VALUE)
    backend = make_docker_backend(docker_host=NO_DAEMON, secret_env_sources=["SITE_SECRET"])
    spec = backend.prepare(docker_request(study=study(secret_env=(SecretEnvRef(name="HOME", source="SITE_SECRET", key="k"),))))
    assert create_kwargs(spec)["environment"]["HOME"] == "/tmp"


@pytest.mark.parametrize("source, allowed, message", [
    ("SECRET_KEY", [], "not one of the site's docker.secret_env_sources (none)"),
    ("DATABASE_URL", ["OTHER"], "not one of the site's docker.secret_env_sources (OTHER)"),
    ("MISSING_VAR", ["MISSING_VAR"], "environment variable MISSING_VAR is not set"),
    ("bad name", ["X"], "must name an environment variable"),
])
def test_secret_env_sources_outside_the_staff_list_or_unset_fail_naming_them(
        make_docker_backend, docker_request, monkeypatch, source, allowed, message):
    monkeypatch.setenv("SECRET_KEY", "django-key")
    monkeypatch.setenv("DATABASE_URL", "postgres://launcher:pw@db/launcher")
    monkeypatch.delenv("MISSING_VAR", raising=False)
    backend = make_docker_backend(docker_host=NO_DAEMON, secret_env_sources=allowed)
    with pytest.raises(InvalidJobSpec) as info:
        backend.prepare(docker_request(study=study(secret_env=(SecretEnvRef(name="T", source=source, key="k"),))))
    assert info.value.field == "study.cancer.secret_env.T.source" and message in info.value.reason
    assert "django-key" not in str(info.value) and "pw@db" not in str(info.value)


@pytest.mark.parametrize("name", ["SECRET_KEY", "DATABASE_URL", "REDIS_URL", "LAUNCHER_ADMIN_PASSWORD",
                                  "DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "SECRET_KEY_FILE", "NVFLARE_JOB_AUTH_TOKEN"])
def test_staff_cannot_list_the_launchers_own_secrets(name):
    with pytest.raises(InvalidJobSpec) as info:
        DockerSiteConfig.from_dict({"secret_env_sources": [name]})
    assert info.value.field == "docker.secret_env_sources"


def test_secret_env_may_not_take_launcher_owned_names(make_docker_backend, docker_request, monkeypatch):
    monkeypatch.setenv("SITE_SECRET", VALUE)
    backend = make_docker_backend(docker_host=NO_DAEMON, secret_env_sources=["SITE_SECRET"])
    with pytest.raises(InvalidJobSpec, match="launcher-owned"):
        backend.prepare(docker_request(study=study(
            secret_env=(SecretEnvRef(name="NVFLARE_JOB_AUTH_TOKEN", source="SITE_SECRET", key="k"),))))


def test_secret_mount_is_a_read_only_bind_after_the_datasets(make_docker_backend, docker_request, secrets_dir):
    backend = make_docker_backend(docker_host=NO_DAEMON)
    mount = SecretMount(study="cancer", name="tls", source=str(secrets_dir), mount_path="/run/secrets/tls")
    spec = backend.prepare(docker_request(study=study(secret_mounts=(mount,))))
    assert spec.options["mounts"][-1] == {"Type": "bind", "Source": str(secrets_dir), "Target": "/run/secrets/tls",
                                          "ReadOnly": True}


@pytest.mark.parametrize("case", ["outside roots", "workspace", "startup", "symlink", "items", "into workspace",
                                  "relative target", "over a dataset"])
def test_secret_mounts_are_confined_like_datasets(case, make_docker_backend, docker_request, docker_workspace,
                                                  secrets_dir, tmp_path):
    backend = make_docker_backend(docker_host=NO_DAEMON, allowed_data_roots=(str(secrets_dir.parent), str(docker_workspace)))
    source, target, items, field = str(secrets_dir), "/run/secrets/tls", None, "source"
    if case == "outside roots":
        (tmp_path / "elsewhere").mkdir()
        source = str(tmp_path / "elsewhere")
    elif case == "workspace":
        source = str(docker_workspace)
    elif case == "startup":
        source = str(docker_workspace / "startup")
    elif case == "symlink":
        os.symlink(docker_workspace / "startup", secrets_dir.parent / "link")
        source = str(secrets_dir.parent / "link")
    elif case == "items":
        items, field = (("tls.crt", "cert.pem"),), "items"
    elif case == "into workspace":
        target, field = f"{CONTAINER_ROOT}/startup", "mount_path"
    elif case == "relative target":
        target, field = "run/secrets", "mount_path"
    elif case == "over a dataset":
        target, field = "/data/cancer", "mount_path"
    mount = SecretMount(study="cancer", name="tls", source=source, mount_path=target, items=items)
    with pytest.raises(InvalidJobSpec) as info:
        backend.prepare(docker_request(study=study(datasets=docker_request().study.datasets, secret_mounts=(mount,))))
    assert info.value.field == f"study.cancer.secret_mounts.tls.{field}", info.value
    if case == "items":
        assert "Kubernetes-only" in info.value.reason


@pytest.mark.docker
def test_a_container_gets_the_secret_env_and_the_read_only_mount(docker_backend, docker_client, make_docker_backend,
                                                                 docker_request, docker_workspace, secrets_dir, monkeypatch):
    # docker_backend: this site's containers are removed afterwards
    monkeypatch.setenv("HOSPITAL_DB_PASSWORD", VALUE)
    backend = make_docker_backend(secret_env_sources=["HOSPITAL_DB_PASSWORD"])
    runtime = study(secret_env=(SecretEnvRef(name="DB_PASSWORD", source="HOSPITAL_DB_PASSWORD", key="x"),),
                    secret_mounts=(SecretMount(study="cancer", name="tls", source=str(secrets_dir),
                                               mount_path="/run/secrets/tls"),))
    spec = backend.prepare(docker_request(job_id="secret-1", study=runtime))
    handle = backend.launch(spec)
    wait_until(lambda: backend.inspect(handle).state.is_terminal, timeout=20)
    env = (docker_workspace / "secret-1" / "fake-python.env").read_text().splitlines()
    assert f"DB_PASSWORD={VALUE}" in env
    mounts = docker_client.containers.get(handle.ref).attrs["HostConfig"]["Mounts"]
    assert {"Type": "bind", "Source": str(secrets_dir), "Target": "/run/secrets/tls", "ReadOnly": True} in mounts
