"""DockerBackend.prepare(): validation and resolution into a LaunchSpec. Uses the real filesystem,
never the daemon (the backend here points at a socket with nothing behind it)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from backends.base import InvalidJobSpec, StudyRuntime, labels_for
from backends.docker.specs import CONTAINER_ROOT

from tests.backends.conftest import IMAGE, SIGNATURE, SSID, TOKEN

NO_DAEMON = "unix:///nonexistent/docker.sock"


@pytest.fixture
def backend(make_docker_backend):
    return make_docker_backend(docker_host=NO_DAEMON)


def test_prepare_resolves_a_client_job(backend, docker_request, docker_workspace, docker_data_root, docker_site):
    request = docker_request(job_id="job-1", set_options=("a=1", "b=2"))
    spec = backend.prepare(request)

    assert spec.name == f"{docker_site}-job-1"
    assert spec.image == IMAGE
    assert spec.command == (
        "/usr/local/bin/python", "-u", "-m", "nvflare.private.fed.app.client.worker_process",
        "-m", "/var/tmp/nvflare/workspace", "-w", "/var/tmp/nvflare/workspace/startup", "-n", "job-1",
        "-c", docker_site, "-p", f"tcp://{docker_site}:8004", "--parent_conn_sec", "clear", "-s", "fed_client.json",
        "--set", "a=1", "b=2",
    )
    assert spec.workdir == f"{CONTAINER_ROOT}/job-1"
    assert spec.labels == labels_for(site=docker_site, job_pk=request.job_pk, job_id="job-1", study="cancer")
    assert spec.options["mounts"] == [
        {"Type": "tmpfs", "Target": CONTAINER_ROOT, "ReadOnly": False, "TmpfsOptions": {"Mode": 0o1777}},
        {"Type": "bind", "Source": f"{docker_workspace}/startup", "Target": f"{CONTAINER_ROOT}/startup", "ReadOnly": True},
        {"Type": "bind", "Source": f"{docker_workspace}/local", "Target": f"{CONTAINER_ROOT}/local", "ReadOnly": True},
        {"Type": "bind", "Source": f"{docker_workspace}/job-1", "Target": f"{CONTAINER_ROOT}/job-1", "ReadOnly": False},
        {"Type": "bind", "Source": f"{docker_data_root}/images", "Target": "/data/cancer/images", "ReadOnly": True},
        {"Type": "bind", "Source": f"{docker_data_root}/scratch", "Target": "/data/cancer/scratch", "ReadOnly": False},
    ]
    assert {k: spec.options[k] for k in ("network", "user", "working_dir", "name", "image", "labels")} == {
        "network": "nvflare-network", "user": "1000:1000", "working_dir": spec.workdir, "name": spec.name,
        "image": IMAGE, "labels": spec.labels,
    }
    assert "auto_remove" not in spec.options and "environment" not in spec.options
    json.dumps(spec.redacted())  # JSON-safe as stored on the job


def test_credentials_only_in_credentials(backend, docker_request):
    spec = backend.prepare(docker_request())
    assert spec.credentials == {"NVFLARE_JOB_AUTH_TOKEN": TOKEN, "NVFLARE_JOB_TOKEN_SIGNATURE": SIGNATURE,
                                "NVFLARE_JOB_SSID": SSID}
    elsewhere = json.dumps({"env": spec.env, "options": spec.options, "command": spec.command, "labels": spec.labels})
    redacted = json.dumps(spec.redacted())
    for secret in (TOKEN, SIGNATURE, SSID):
        assert secret not in elsewhere
        assert secret not in redacted


def test_env_precedence(make_docker_backend, docker_request, docker_workspace, docker_site):
    backend = make_docker_backend(docker_host=NO_DAEMON,
                           default_job_env={"SITE_ONLY": "site", "BOTH": "site", "USER": "site-user", "HOME": "/site"})
    (docker_workspace / "local" / "custom").mkdir()
    (docker_workspace / "job-1" / f"app_{docker_site}" / "custom").mkdir(parents=True)
    spec = backend.prepare(docker_request(job_id="job-1", env={"BOTH": "study", "STUDY_ONLY": "study"}))
    assert spec.env == {
        "SITE_ONLY": "site", "BOTH": "study", "STUDY_ONLY": "study", "USER": "nvflare", "HOME": "/tmp",
        "PYTHONPATH": f"{CONTAINER_ROOT}/job-1/app_{docker_site}/custom:{CONTAINER_ROOT}/local/custom",
    }


def test_no_pythonpath_without_custom_dirs(backend, docker_request):
    assert "PYTHONPATH" not in backend.prepare(docker_request()).env


@pytest.mark.parametrize("name", ["PYTHONPATH", "NVFLARE_JOB_AUTH_TOKEN", "NVFL_WORKSPACE_TRANSFER_TOKEN"])
def test_study_env_may_not_set_launcher_owned_names(backend, docker_request, name):
    with pytest.raises(InvalidJobSpec, match="launcher-owned"):
        backend.prepare(docker_request(env={name: "x"}))


def test_python_path_job_beats_site(make_docker_backend, docker_request):
    backend = make_docker_backend(docker_host=NO_DAEMON, default_python_path="/site/python")
    assert backend.prepare(docker_request(docker={"image": IMAGE})).command[0] == "/site/python"
    assert backend.prepare(docker_request(docker={"image": IMAGE, "python_path": "/job/python"})).command[0] == "/job/python"


def test_image_precedence(backend, docker_request):
    study = StudyRuntime(name="cancer", image="study/image:2")
    assert backend.prepare(docker_request(docker={}, study=study)).image == "study/image:2"
    assert backend.prepare(docker_request(docker={"image": "job/image:3"}, study=study)).image == "job/image:3"
    with pytest.raises(InvalidJobSpec, match="no job image was specified"):
        backend.prepare(docker_request(docker={"image": ""}, study=None))


def test_unsupported_job_option_names_it(backend, docker_request, docker_site):
    with pytest.raises(InvalidJobSpec) as error:
        backend.prepare(docker_request(docker={"image": IMAGE, "privileged": True}))
    assert "unsupported job-controlled Docker option(s) ['privileged']" in str(error.value)
    assert "entrypoint, image, num_of_gpus, python_path, shm_size" in str(error.value)


def test_entrypoint_needs_byoc_or_site_permission(make_docker_backend, docker_request):
    request = docker_request(docker={"image": IMAGE, "entrypoint": ["/bin/sh", "-c"]})
    with pytest.raises(InvalidJobSpec, match="lacks locally authorized BYOC"):
        make_docker_backend(docker_host=NO_DAEMON).prepare(request)
    assert make_docker_backend(docker_host=NO_DAEMON, allow_job_images=True).prepare(request).options["entrypoint"] == ["/bin/sh", "-c"]
    byoc = docker_request(docker={"image": IMAGE, "entrypoint": "/bin/sh"}, byoc=True)
    assert make_docker_backend(docker_host=NO_DAEMON).prepare(byoc).options["entrypoint"] == "/bin/sh"


def test_resources_and_site_study_job_merge(make_docker_backend, docker_request):
    backend = make_docker_backend(docker_host=NO_DAEMON, default_job_container_kwargs={"shm_size": "1g", "pids_limit": 100})
    study = StudyRuntime(name="cancer", docker_kwargs={"shm_size": "2g", "cpu_shares": 512})
    meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE, "shm_size": "3g", "num_of_gpus": 2}}},
            "resource_spec": {"@default": {"num_of_cpus": 2, "memory": "1Gi"}}}
    spec = backend.prepare(docker_request(job_meta=meta, study=study))
    assert {k: spec.options.get(k) for k in ("shm_size", "pids_limit", "cpu_shares", "device_requests", "nano_cpus", "mem_limit")} == {
        "shm_size": 3 * 2**30, "pids_limit": 100, "cpu_shares": 512,
        "device_requests": [{"Count": 2, "Capabilities": [["gpu"]]}], "nano_cpus": 2_000_000_000, "mem_limit": 2**30,
    }


def test_conflicting_gpu_counts_refused(backend, docker_request, docker_site):
    meta = {"launcher_spec": {docker_site: {"docker": {"image": IMAGE, "num_of_gpus": 2}}},
            "resource_spec": {docker_site: {"num_of_gpus": 1}}}
    with pytest.raises(InvalidJobSpec, match="conflicts with resource_spec"):
        backend.prepare(docker_request(job_meta=meta))


@pytest.mark.parametrize("key", ["privileged", "network_mode", "user", "volumes", "pid_mode", "shm_sise"])
def test_study_docker_kwargs_checked(backend, docker_request, key):
    with pytest.raises(InvalidJobSpec) as error:
        backend.prepare(docker_request(study=StudyRuntime(name="cancer", docker_kwargs={key: "x"})))
    assert error.value.field == f"study.cancer.docker_kwargs.{key}"


# ---------------------------------------------------------------------------------------------
# Path safety
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job_id", "phrase"),
    [
        ("../escape", "single workspace child"),
        ("..", "single workspace child"),
        (".", "single workspace child"),
        ("a/b", "single workspace child"),
        ("/etc", "single workspace child"),
        ("a/../b", "single workspace child"),
        ("startup", "reserved workspace name"),
        ("local", "reserved workspace name"),
        ("", "single workspace child"),
    ],
)
def test_job_id_must_be_a_safe_workspace_child(backend, docker_request, job_id, phrase):
    request = docker_request(job_meta={"launcher_spec": {"default": {"docker": {"image": IMAGE}}}})
    request = dataclasses.replace(request, job_id=job_id)
    with pytest.raises(InvalidJobSpec, match=phrase):
        backend.prepare(request)


def test_job_dir_symlink_out_of_workspace_refused(backend, docker_request, docker_workspace, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", docker_workspace / "job-1")
    with pytest.raises(InvalidJobSpec, match="must not be a symlink"):
        backend.prepare(docker_request(job_id="job-1"))


def test_job_dir_symlink_inside_workspace_refused(backend, docker_request, docker_workspace):
    (docker_workspace / "other").mkdir()
    os.symlink(docker_workspace / "other", docker_workspace / "job-1")
    with pytest.raises(InvalidJobSpec, match="must not be a symlink"):
        backend.prepare(docker_request(job_id="job-1"))


def test_workspace_must_exist_with_startup_and_local(make_docker_backend, docker_request, docker_workspace, tmp_path):
    with pytest.raises(InvalidJobSpec, match="does not exist"):
        make_docker_backend(docker_host=NO_DAEMON, workspace=str(tmp_path / "missing")).prepare(docker_request())
    (docker_workspace / "local").rmdir()
    with pytest.raises(InvalidJobSpec, match="local does not exist"):
        make_docker_backend(docker_host=NO_DAEMON).prepare(docker_request())


def test_workspace_from_environment_when_not_configured(make_docker_backend, docker_request, docker_workspace, monkeypatch):
    monkeypatch.setenv("NVFL_DOCKER_WORKSPACE", str(docker_workspace))
    assert make_docker_backend(docker_host=NO_DAEMON, workspace="").prepare(docker_request()).options["mounts"][1]["Source"] == f"{docker_workspace}/startup"
    monkeypatch.delenv("NVFL_DOCKER_WORKSPACE")
    with pytest.raises(InvalidJobSpec, match="no workspace configured"):
        make_docker_backend(docker_host=NO_DAEMON, workspace="").prepare(docker_request())


def test_user_defaults_to_workspace_owner_and_root_is_refused(make_docker_backend, docker_request, docker_workspace):
    os.chown(docker_workspace, 1234, 5678)
    assert make_docker_backend(docker_host=NO_DAEMON).prepare(docker_request()).options["user"] == "1234:5678"
    assert make_docker_backend(docker_host=NO_DAEMON, user="2000:2000").prepare(docker_request()).options["user"] == "2000:2000"
    os.chown(docker_workspace, 0, 0)
    with pytest.raises(InvalidJobSpec, match="uid 0"):
        make_docker_backend(docker_host=NO_DAEMON).prepare(docker_request())
    assert make_docker_backend(docker_host=NO_DAEMON, allow_root=True).prepare(docker_request()).options["user"] == "0:0"


def _study_with_source(source: str, mode: str = "ro") -> StudyRuntime:
    from backends.base import DatasetSpec

    return StudyRuntime(name="cancer", datasets=(DatasetSpec(study="cancer", name="d", source=source, mode=mode),))


def test_dataset_outside_allowed_roots_refused(backend, docker_request, tmp_path):
    (tmp_path / "private").mkdir()
    with pytest.raises(InvalidJobSpec, match="outside the site's allowed data roots") as error:
        backend.prepare(docker_request(study=_study_with_source(str(tmp_path / "private"))))
    assert error.value.field == "study.cancer.datasets.d.source"


def test_dataset_symlink_is_refused_and_dotdot_is_lexical(backend, docker_request, docker_data_root, tmp_path):
    (tmp_path / "private").mkdir()
    os.symlink(tmp_path / "private", docker_data_root / "sneaky")
    with pytest.raises(InvalidJobSpec, match="sneaky must not be a symlink"):
        backend.prepare(docker_request(study=_study_with_source(str(docker_data_root / "sneaky"))))
    with pytest.raises(InvalidJobSpec, match="outside the site's allowed data roots"):
        backend.prepare(docker_request(study=_study_with_source(f"{docker_data_root}/../private")))


def test_missing_dataset_source_refused(backend, docker_request, docker_data_root):
    with pytest.raises(InvalidJobSpec, match="does not exist"):
        backend.prepare(docker_request(study=_study_with_source(str(docker_data_root / "nope"))))


@pytest.mark.parametrize("source", ["/", "/var/run/docker.sock", "/run/docker.sock", "/var/run", "/run"])
def test_root_and_docker_socket_never_mountable(make_docker_backend, docker_request, source):
    if not os.path.exists(source):
        pytest.skip(f"{source} does not exist on this machine")
    backend = make_docker_backend(docker_host=NO_DAEMON, allowed_data_roots=("/",))
    with pytest.raises(InvalidJobSpec, match="Docker socket"):
        backend.prepare(docker_request(study=_study_with_source(source)))


def test_custom_docker_host_socket_never_mountable(make_docker_backend, docker_request, docker_data_root):
    sock = docker_data_root / "images" / "engine.sock"
    sock.write_text("")
    backend = make_docker_backend(docker_host=f"unix://{sock}")
    with pytest.raises(InvalidJobSpec, match="Docker socket"):
        backend.prepare(docker_request(study=_study_with_source(str(sock))))


def test_bad_dataset_mode_refused(backend, docker_request, docker_data_root):
    with pytest.raises(InvalidJobSpec, match="'ro' or 'rw'"):
        backend.prepare(docker_request(study=_study_with_source(str(docker_data_root / "images"), mode="rwx")))


def test_shared_file_parent_dir_is_bound_rw(make_docker_backend, docker_request, tmp_path):
    shared = tmp_path / "shared" / "run-1"
    shared.mkdir(parents=True)
    backend = make_docker_backend(docker_host=NO_DAEMON, shared_file_root=str(tmp_path / "shared"))
    spec = backend.prepare(docker_request(job_args={"parent_url": ["-p", f"shared-file://0{shared}"]}))
    assert spec.options["mounts"][-1] == {"Type": "bind", "Source": str(shared), "Target": str(shared), "ReadOnly": False}
    assert f"shared-file://0{shared}" in spec.command


def test_job_args_job_id_must_match(backend, docker_request):
    with pytest.raises(InvalidJobSpec, match="does not match"):
        backend.prepare(docker_request(job_id="job-1", job_args={"job_id": ["-n", "job-2"]}))
