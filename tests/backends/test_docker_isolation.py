"""Job-container isolation on the real daemon: bind sources re-checked at launch (symlinks, the
check-then-mount race) and the launcher's hardening (cap_drop ALL, no-new-privileges)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from backends.base import BackendError, DatasetSpec, InvalidJobSpec, StudyRuntime
from backends.docker.specs import CONTAINER_ROOT
from tests.backends.conftest import IMAGE, JOB_GID, JOB_UID
from tests.util import wait_until

pytestmark = pytest.mark.docker

MARKER = f"ROOT-ONLY-MARKER-{uuid.uuid4().hex}"
SHOW = ["/bin/sh", "-c", 'cat "$PWD/marker" /data/cancer/victim/marker 2>/dev/null; '
        'sed -n -e "s/^CapEff:/CAPEFF/p" -e "s/^NoNewPrivs:/NNP/p" /proc/self/status']


def _logs_when_done(backend, handle, timeout=30):
    observation = wait_until(lambda: (o := backend.inspect(handle)).state.is_terminal and o, timeout=timeout,
                             message=f"{handle.ref} to end")
    return observation.logs_tail or backend.logs(handle)


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    """A directory the job user cannot reach on the host (its parent is root-only), holding MARKER."""
    private = tmp_path / "private"
    secret = private / "secret"
    secret.mkdir(parents=True)
    (secret / "marker").write_text(MARKER + "\n")
    os.chmod(private, 0o700)
    return secret


# ---------------------------------------------------------------------------------------------
# Hardening
# ---------------------------------------------------------------------------------------------


def test_containers_drop_all_capabilities_and_cannot_gain_privileges(make_docker_backend, docker_backend, docker_request,
                                                                     docker_client):
    backend = make_docker_backend(allow_job_images=True)
    study = StudyRuntime(name="cancer", docker_kwargs={"cap_drop": ["NET_RAW"]})  # replaced by ALL
    handle = backend.launch(backend.prepare(docker_request(docker={"image": IMAGE, "entrypoint": SHOW}, study=study)))
    host_config = docker_client.containers.get(handle.ref).attrs["HostConfig"]
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["SecurityOpt"] == ["no-new-privileges:true"]
    assert not host_config.get("CapAdd") and not host_config["Privileged"]
    logs = _logs_when_done(backend, handle)
    assert "CAPEFF\t0000000000000000" in logs
    assert "NNP\t1" in logs


def test_staff_may_relax_capabilities_and_privilege_escalation(make_docker_backend, docker_backend, docker_request,
                                                               docker_client):
    backend = make_docker_backend(allow_job_images=True, allow_default_capabilities=True,
                                  allow_privilege_escalation=True)
    study = StudyRuntime(name="cancer", docker_kwargs={"cap_drop": ["NET_RAW"]})  # the site's own drop list stays
    handle = backend.launch(backend.prepare(docker_request(docker={"image": IMAGE, "entrypoint": SHOW}, study=study)))
    host_config = docker_client.containers.get(handle.ref).attrs["HostConfig"]
    assert host_config["CapDrop"] == ["NET_RAW"]
    assert not host_config.get("SecurityOpt")
    logs = _logs_when_done(backend, handle)
    assert "NNP\t0" in logs


# ---------------------------------------------------------------------------------------------
# Symlinked bind sources are refused at launch (after a clean prepare)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["startup", "local", "job-dir"])
def test_symlinked_workspace_entry_refused_at_launch(docker_backend, docker_request, docker_workspace, secret_dir,
                                                     docker_site_containers, entry):
    spec = docker_backend.prepare(docker_request(job_id="sym-1"))
    name = "sym-1" if entry == "job-dir" else entry
    if entry != "job-dir":
        os.rename(docker_workspace / name, docker_workspace / f"{name}.orig")
    os.symlink(secret_dir, docker_workspace / name)
    with pytest.raises(InvalidJobSpec, match=f"{docker_workspace / name} must not be a symlink") as error:
        docker_backend.launch(spec)
    assert not error.value.retryable  # launching.py turns this into launch_failed with this reason
    assert docker_site_containers() == []


def test_symlinked_dataset_parent_refused_at_launch(docker_backend, docker_request, docker_data_root, secret_dir,
                                                    docker_site_containers):
    (docker_data_root / "nested" / "victim").mkdir(parents=True)
    study = StudyRuntime(name="cancer", datasets=(
        DatasetSpec(study="cancer", name="victim", source=str(docker_data_root / "nested" / "victim"), mode="ro"),))
    spec = docker_backend.prepare(docker_request(study=study))
    os.rename(docker_data_root / "nested", docker_data_root / "nested.orig")
    os.symlink(secret_dir.parent, docker_data_root / "nested")
    os.rename(secret_dir, secret_dir.parent / "victim")
    with pytest.raises(InvalidJobSpec, match="nested must not be a symlink"):
        docker_backend.launch(spec)
    assert docker_site_containers() == []


# ---------------------------------------------------------------------------------------------
# The check-then-mount race
# ---------------------------------------------------------------------------------------------


class Swapper(threading.Thread):
    """A host user who can write `path`'s parent: when the daemon reports `event` ("create" or
    "start") for the container `name`, swaps the real directory at `path` for a symlink to `target`
    and leaves it there. It strikes on the engine's own event, so each launch is raced in the
    window that event opens, not after a guessed delay; the event stream ends by itself after
    `timeout` seconds (then nothing is swapped)."""

    def __init__(self, client, name: str, event: str, path: Path, target: Path, timeout: float = 20):
        super().__init__(daemon=True)
        self.path, self.target = path, target
        now = time.time()
        # `since` now (to the nanosecond): without it the daemon replays its buffered past events,
        # such as an earlier container of the same name being created.
        self.events = client.events(decode=True, since=f"{now:.9f}", until=f"{now + timeout:.9f}",
                                    filters={"type": "container", "event": event, "container": name})
        self.struck = threading.Event()

    def run(self) -> None:
        for _ in self.events:
            swap(self.path, self.target)
            self.struck.set()
            break
        self.events.close()


def swap(path: Path, target: Path) -> None:
    os.rename(path, path.with_name(path.name + ".orig"))
    os.symlink(target, path)


# The moments a launch is raced at: right after prepare() (before launch() pins its sources), and
# as the daemon reports the container created (before the pre-start check) or started.
STRIKES = ("prepared", "create", "start")


def _race(backend, client, docker_request, path_for, target, launches, **request):
    """Launch `launches` jobs, each raced by a swap at one of STRIKES in turn. Returns (started,
    refused, leaked job ids)."""
    started, refused, leaked, reasons = 0, 0, [], set()
    for i in range(launches):
        job_id = f"race-{i}"
        path = path_for(job_id)
        path.mkdir(exist_ok=True)
        os.chown(path, JOB_UID, JOB_GID)
        spec = backend.prepare(docker_request(job_id=job_id, **request))
        strike = STRIKES[i % len(STRIKES)]
        swapper = None
        if strike == "prepared":
            swap(path, target)
        else:
            swapper = Swapper(client, spec.name, strike, path, target)
            swapper.start()
        try:
            handle = backend.launch(spec)
        except BackendError as exc:
            refused += 1
            reasons.add(f"{strike}: {exc}"[-90:])
            continue
        finally:
            if swapper is not None:
                swapper.join(30)
                assert not swapper.is_alive(), "the event stream did not end"
            if path.is_symlink():
                os.unlink(path)
                os.rename(path.with_name(path.name + ".orig"), path)
        started += 1
        if MARKER in _logs_when_done(backend, handle):
            leaked.append(job_id)
        backend.cleanup(handle)
    print(f"race: {started} started, {refused} refused, {len(leaked)} leaked; reasons {sorted(reasons)}")
    return started, refused, leaked


RACE_LAUNCHES = 24


def test_job_dir_swap_race_never_starts_a_job_on_the_target(make_docker_backend, docker_backend, docker_client,
                                                            docker_request, docker_workspace, secret_dir,
                                                            docker_site_containers):
    """The job dir is swapped for a symlink to a root-only directory during launch (STRIKES). Every job that did start must have mounted its own directory; every other launch fails
    permanently and leaves no container. (A swap that is undone again before the post-start check
    is the documented residual window; see backends/docker/binds.py.)"""
    backend = make_docker_backend(allow_job_images=True)
    started, refused, leaked = _race(backend, docker_client, docker_request, lambda job_id: docker_workspace / job_id,
                                     secret_dir,
                                     RACE_LAUNCHES, docker={"image": IMAGE, "entrypoint": SHOW})
    assert leaked == [], f"{len(leaked)} of {started} started jobs read the root-only marker ({refused} refused)"
    assert started + refused == RACE_LAUNCHES and refused > 0
    assert docker_site_containers() == []


def test_nested_dataset_swap_race_never_starts_a_job_on_the_target(make_docker_backend, docker_backend, docker_client,
                                                                   docker_request, docker_data_root, secret_dir,
                                                                   docker_site_containers):
    """Same race on a dataset whose parent the job user can write."""
    backend = make_docker_backend(allow_job_images=True)
    (docker_data_root / "open").mkdir()
    os.chown(docker_data_root / "open", JOB_UID, JOB_GID)
    victim = docker_data_root / "open" / "victim"
    study = StudyRuntime(name="cancer", datasets=(DatasetSpec(study="cancer", name="victim", source=str(victim), mode="ro"),))
    started, refused, leaked = _race(backend, docker_client, docker_request, lambda job_id: victim, secret_dir,
                                     RACE_LAUNCHES // 2,
                                     docker={"image": IMAGE, "entrypoint": SHOW}, study=study)
    assert leaked == [], f"{len(leaked)} of {started} started jobs read the root-only marker ({refused} refused)"
    assert started + refused == RACE_LAUNCHES // 2 and refused > 0
    assert docker_site_containers() == []


def test_job_dir_is_mounted_normally_without_a_swap(make_docker_backend, docker_backend, docker_request,
                                                    docker_workspace):
    backend = make_docker_backend(allow_job_images=True)
    (docker_workspace / "plain-1").mkdir()
    (docker_workspace / "plain-1" / "marker").write_text("job's own marker\n")
    handle = backend.launch(backend.prepare(docker_request(job_id="plain-1", docker={"image": IMAGE, "entrypoint": SHOW})))
    logs = _logs_when_done(backend, handle)
    assert "job's own marker" in logs and MARKER not in logs  # $PWD is the job dir
    assert backend.prepare(docker_request(job_id="plain-1")).workdir == f"{CONTAINER_ROOT}/plain-1"
