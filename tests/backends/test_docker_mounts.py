"""Bind-mount containment in DockerBackend.prepare(): the shared-file parent dir, dataset sources
and workspace entries, against real directories (no daemon: the backend points at a dead socket)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backends.base import DatasetSpec, InvalidJobSpec, StudyRuntime

NO_DAEMON = "unix:///nonexistent/docker.sock"
SHARED_FIELD = "job_args.parent_url"


def _shared(directory: Path | str) -> dict:
    return {"parent_url": ["-p", f"shared-file://0{directory}"]}


def _refusal(backend, request) -> InvalidJobSpec:
    with pytest.raises(InvalidJobSpec) as error:
        backend.prepare(request)
    return error.value


@pytest.fixture
def shared_root(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    (root / "run-1").mkdir(parents=True)
    return root


# ---------------------------------------------------------------------------------------------
# shared-file parent URLs
# ---------------------------------------------------------------------------------------------


def test_shared_file_needs_the_site_setting(make_docker_backend, docker_request, shared_root):
    error = _refusal(make_docker_backend(docker_host=NO_DAEMON), docker_request(job_args=_shared(shared_root / "run-1")))
    assert error.field == SHARED_FIELD
    assert "docker.shared_file_root" in error.reason


@pytest.mark.parametrize("entry", ["", "startup", "local", "job-1"])
def test_shared_file_into_the_workspace_refused(make_docker_backend, docker_request, docker_workspace, tmp_path, entry):
    """Attack: parent_url shared-file://0/<workspace> (or startup/, local/, a job dir) bound rw.
    Even when the shared root holds the workspace's real path (the configured one is a symlink,
    so the setting's own text check cannot see it), launch-time checks refuse it."""
    (docker_workspace / "job-1").mkdir()
    link = tmp_path.parent / f"{tmp_path.name}-ws-link"  # lexically outside the shared root
    os.symlink(docker_workspace, link)
    backend = make_docker_backend(docker_host=NO_DAEMON, workspace=str(link), shared_file_root=str(tmp_path))
    target = docker_workspace / entry if entry else docker_workspace
    error = _refusal(backend, docker_request(job_args=_shared(target)))
    assert error.field == SHARED_FIELD
    assert f"overlaps the site workspace {docker_workspace}" in error.reason


def test_shared_file_root_holding_the_workspace_refused_as_a_setting(make_docker_backend, docker_workspace):
    with pytest.raises(InvalidJobSpec, match="overlaps the workspace") as error:
        make_docker_backend(shared_file_root=str(docker_workspace.parent))
    assert error.value.field == "docker.shared_file_root"


@pytest.mark.parametrize("which", ["data root", "inside data root", "dataset", "inside dataset", "holds data root"])
def test_shared_file_overlapping_data_refused(make_docker_backend, docker_request, tmp_path, which):
    shared_root = tmp_path / "shared"
    data_root = shared_root / "area" / "data"
    (data_root / "images" / "x").mkdir(parents=True)
    (data_root / "other").mkdir()
    backend = make_docker_backend(docker_host=NO_DAEMON, allowed_data_roots=(str(data_root),),
                                  shared_file_root=str(shared_root))
    study = StudyRuntime(name="cancer", datasets=(
        DatasetSpec(study="cancer", name="images", source=str(data_root / "images"), mode="ro"),))
    directory = {"data root": data_root, "inside data root": data_root / "other", "dataset": data_root / "images",
                 "inside dataset": data_root / "images" / "x", "holds data root": shared_root / "area"}[which]
    error = _refusal(backend, docker_request(study=study, job_args=_shared(directory)))
    assert error.field == SHARED_FIELD
    assert " overlaps the " in error.reason and "never mounted read-write" in error.reason


def test_shared_file_accepted_next_to_unrelated_datasets(make_docker_backend, docker_request, docker_data_root,
                                                         shared_root):
    backend = make_docker_backend(docker_host=NO_DAEMON, shared_file_root=str(shared_root))
    study = StudyRuntime(name="cancer", datasets=(
        DatasetSpec(study="cancer", name="images", source=str(docker_data_root / "images"), mode="ro"),))
    spec = backend.prepare(docker_request(study=study, job_args=_shared(shared_root / "run-1")))
    assert spec.options["mounts"][-1]["Source"] == str(shared_root / "run-1")


def test_shared_file_outside_the_root_gets_one_answer_whether_or_not_it_exists(make_docker_backend, docker_request,
                                                                                shared_root, tmp_path):
    """No existence oracle: the refusal text depends only on the path, never on the filesystem."""
    backend = make_docker_backend(docker_host=NO_DAEMON, shared_file_root=str(shared_root))
    (tmp_path / "exists").mkdir()
    os.chmod(tmp_path / "exists", 0o700)
    answers = []
    for name in ("exists", "missing"):
        error = _refusal(backend, docker_request(job_args=_shared(tmp_path / name)))
        answers.append(error.reason.replace(name, "<dir>"))
    assert answers[0] == answers[1]
    assert "is not strictly inside docker.shared_file_root" in answers[0]
    # the root itself is refused too (a shared dir lies strictly under it)
    assert "strictly inside" in _refusal(backend, docker_request(job_args=_shared(shared_root))).reason


def test_dataset_outside_the_roots_gets_one_answer_whether_or_not_it_exists(make_docker_backend, docker_request,
                                                                            tmp_path):
    backend = make_docker_backend(docker_host=NO_DAEMON)
    (tmp_path / "exists").mkdir()
    answers = []
    for name in ("exists", "missing"):
        study = StudyRuntime(name="cancer", datasets=(
            DatasetSpec(study="cancer", name="d", source=str(tmp_path / name), mode="ro"),))
        answers.append(_refusal(backend, docker_request(study=study)).reason.replace(name, "<dir>"))
    assert answers[0] == answers[1] and "outside the site's allowed data roots" in answers[0]


def test_shared_file_symlink_refused(make_docker_backend, docker_request, shared_root, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", shared_root / "link")
    backend = make_docker_backend(docker_host=NO_DAEMON, shared_file_root=str(shared_root))
    for directory in (shared_root / "link", shared_root / "link" / "deeper"):
        assert "link must not be a symlink" in _refusal(backend, docker_request(job_args=_shared(directory))).reason


def test_shared_file_bound_with_its_real_path(make_docker_backend, docker_request, shared_root, tmp_path):
    link = tmp_path / "shared-link"
    os.symlink(shared_root, link)  # staff may configure the root through a symlink
    backend = make_docker_backend(docker_host=NO_DAEMON, shared_file_root=str(link))
    spec = backend.prepare(docker_request(job_args=_shared(link / "run-1")))
    assert spec.options["mounts"][-1] == {"Type": "bind", "Source": str(shared_root / "run-1"),
                                          "Target": str(link / "run-1"), "ReadOnly": False}


# ---------------------------------------------------------------------------------------------
# Datasets and workspace entries
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["workspace", "startup", "holds workspace"])
def test_dataset_overlapping_the_workspace_refused(make_docker_backend, docker_request, docker_workspace, which):
    backend = make_docker_backend(docker_host=NO_DAEMON, allowed_data_roots=(str(docker_workspace.parent),))
    source = {"workspace": docker_workspace, "startup": docker_workspace / "startup",
              "holds workspace": docker_workspace.parent}[which]
    study = StudyRuntime(name="cancer", datasets=(DatasetSpec(study="cancer", name="d", source=str(source), mode="rw"),))
    assert "overlaps the site workspace" in _refusal(backend, docker_request(study=study)).reason


def test_source_inside_a_read_write_dataset_refused(make_docker_backend, docker_request, docker_data_root):
    """A job with the outer dataset rw could swap the inner one for a symlink before the next job."""
    (docker_data_root / "scratch" / "inner").mkdir()
    backend = make_docker_backend(docker_host=NO_DAEMON)
    study = StudyRuntime(name="cancer", datasets=(
        DatasetSpec(study="cancer", name="outer", source=str(docker_data_root / "scratch"), mode="rw"),
        DatasetSpec(study="cancer", name="inner", source=str(docker_data_root / "scratch" / "inner"), mode="ro"),
    ))
    assert "lies inside the read-write bind source" in _refusal(backend, docker_request(study=study)).reason
    ro_outer = StudyRuntime(name="cancer", datasets=(
        DatasetSpec(study="cancer", name="outer", source=str(docker_data_root / "scratch"), mode="ro"),
        DatasetSpec(study="cancer", name="inner", source=str(docker_data_root / "scratch" / "inner"), mode="ro"),
    ))
    assert len(backend.prepare(docker_request(study=ro_outer)).options["mounts"]) == 6


def test_dataset_with_a_symlinked_parent_refused(make_docker_backend, docker_request, docker_data_root, tmp_path):
    (tmp_path / "elsewhere" / "d").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", docker_data_root / "via")
    study = StudyRuntime(name="cancer", datasets=(
        DatasetSpec(study="cancer", name="d", source=str(docker_data_root / "via" / "d"), mode="ro"),))
    error = _refusal(make_docker_backend(docker_host=NO_DAEMON), docker_request(study=study))
    assert error.field == "study.cancer.datasets.d.source" and "via must not be a symlink" in error.reason


def test_dataset_file_source_allowed(make_docker_backend, docker_request, docker_data_root):
    study = StudyRuntime(name="cancer", datasets=(
        DatasetSpec(study="cancer", name="d", source=str(docker_data_root / "images" / "train.csv"), mode="ro"),))
    spec = make_docker_backend(docker_host=NO_DAEMON).prepare(docker_request(study=study))
    assert spec.options["mounts"][-1]["Source"] == str(docker_data_root / "images" / "train.csv")


@pytest.mark.parametrize("entry", ["startup", "local"])
def test_symlinked_startup_or_local_refused(make_docker_backend, docker_request, docker_workspace, tmp_path, entry):
    """Attack: a job that could write the workspace replaced startup/ with `ln -s / startup` so the
    next job mounted the host's root."""
    os.rename(docker_workspace / entry, docker_workspace / f"{entry}.orig")
    os.symlink("/", docker_workspace / entry)
    error = _refusal(make_docker_backend(docker_host=NO_DAEMON), docker_request())
    assert error.field == "docker.workspace"
    assert f"{docker_workspace / entry} must not be a symlink" in error.reason


def test_launcher_hardening_options(make_docker_backend, docker_request):
    spec = make_docker_backend(docker_host=NO_DAEMON).prepare(docker_request())
    assert spec.options["cap_drop"] == ["ALL"]
    assert spec.options["security_opt"] == ["no-new-privileges:true"]
    study = StudyRuntime(name="cancer", docker_kwargs={"cap_drop": ["NET_RAW"]})
    assert make_docker_backend(docker_host=NO_DAEMON).prepare(docker_request(study=study)).options["cap_drop"] == ["ALL"]
    relaxed = make_docker_backend(docker_host=NO_DAEMON, allow_default_capabilities=True,
                                  allow_privilege_escalation=True).prepare(docker_request(study=study))
    assert relaxed.options["cap_drop"] == ["NET_RAW"] and "security_opt" not in relaxed.options
    with pytest.raises(InvalidJobSpec, match="never allowed"):
        make_docker_backend(docker_host=NO_DAEMON).prepare(
            docker_request(study=StudyRuntime(name="cancer", docker_kwargs={"security_opt": ["seccomp=unconfined"]})))
