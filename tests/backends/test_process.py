"""The process backend with real subprocesses. What every backend does alike (launch twice, terminate
twice or before launch, exit codes 0/1/9, cleanup, adopt after restart, stream from `since`) is in
test_contract.py."""

import json
import threading

import pytest

from backends.base import InvalidJobSpec, JobRequest, JobState, ReturnCode
from backends.process import ProcessBackend, ProcessSiteConfig
from tests.conftest import client_job_args, job_runtime, process_settings
from tests.util import wait_until

pytestmark = pytest.mark.embedded


@pytest.fixture
def backend(workspace, data_root):
    config = ProcessSiteConfig.from_dict(process_settings(workspace))
    return ProcessBackend(site="site-1", config=config, allowed_data_roots=(str(data_root),))


def request(job_id, *, options=(), **kwargs):
    return JobRequest(site="site-1", job_pk="7", job_id=job_id, job_args=client_job_args(job_id),
                      set_options=tuple(options), **kwargs)


def finished(backend, handle):
    observation = backend.inspect(handle)
    return observation if observation.state.is_terminal else None


def test_success_records_exit_code_and_logs(backend, workspace):
    handle = backend.launch(backend.prepare(request("job-ok")))
    observation = wait_until(lambda: finished(backend, handle), message="job end")
    assert observation.state is JobState.SUCCEEDED
    assert observation.return_code == ReturnCode.SUCCESS and observation.exit_code == 0
    assert "fake job done" in observation.logs_tail
    record = json.loads((workspace / "job-ok" / "job_record.json").read_text())
    assert record["cwd"] == str(workspace / "job-ok")


def test_non_zero_exit_is_execution_error_but_keeps_raw_code(backend):
    handle = backend.launch(backend.prepare(request("job-bad", options=["exit=3"])))
    observation = wait_until(lambda: finished(backend, handle), message="job end")
    assert observation.state is JobState.FAILED
    assert observation.return_code == ReturnCode.EXECUTION_ERROR
    assert observation.exit_code == 3


def test_credentials_reach_env_but_not_argv_or_redacted_spec(backend, workspace):
    spec = backend.prepare(request("job-creds"))
    assert not any("SECRET" in part for part in spec.command)
    assert "SECRET" not in json.dumps(spec.redacted())
    handle = backend.launch(spec)
    wait_until(lambda: finished(backend, handle))
    record = json.loads((workspace / "job-creds" / "job_record.json").read_text())
    assert record["env"]["NVFLARE_JOB_AUTH_TOKEN"] == "tok-SECRET-123"
    assert record["env"]["NVFLARE_JOB_TOKEN_SIGNATURE"] == "sig-SECRET-456"
    assert record["env"]["NVFLARE_JOB_SSID"] == "ssid-SECRET-789"
    assert not any("SECRET" in part for part in record["argv"])
    assert record["env"]["SITE_DEFAULT"] == "yes"


def test_command_follows_nvflare_client_order(backend):
    spec = backend.prepare(request("job-cmd", options=["a=1", "b=2"]))
    assert list(spec.command) == [
        job_runtime()["python"], "-u", "-m", "fake_nvflare_job",
        "-m", "/ws", "-w", "/ws/startup", "-n", "job-cmd", "-c", "site-1", "-p", "tcp://localhost:8004",
        "--parent_conn_sec", "clear", "-scheme", "tcp", "-s", "fed_client.json", "--set", "a=1", "b=2",
    ]


def test_stream_reports_exit(backend):
    stop = threading.Event()
    seen = []

    def consume():
        for observation in backend.stream(stop):
            seen.append(observation)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        handle = backend.launch(backend.prepare(request("job-stream")))
        wait_until(lambda: any(o.ref == handle.ref and o.state is JobState.SUCCEEDED for o in seen), timeout=10,
                   message="exit observed on the stream")
        assert any(o.job_pk == "7" for o in seen)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize("job_id, phrase", [
    ("../escape", "must start with a letter or digit"),
    ("job-1\n", "must start with a letter or digit"),
    ("startup", "reserved workspace name"),
    ("local", "reserved workspace name"),
])
def test_unsafe_job_ids_are_refused(backend, job_id, phrase):
    with pytest.raises(InvalidJobSpec) as info:
        backend.prepare(request(job_id))
    assert phrase in str(info.value)


def test_symlinked_job_dir_is_refused(backend, workspace, tmp_path):
    (workspace / "job-link").symlink_to(tmp_path)
    with pytest.raises(InvalidJobSpec, match="must not be a symlink"):
        backend.prepare(request("job-link"))


def test_job_may_not_choose_python_without_byoc(backend):
    meta = {"launcher_spec": {"site-1": {"process": {"python_path": "/bin/sh"}}}}
    with pytest.raises(InvalidJobSpec, match="BYOC") as info:
        backend.prepare(request("job-py", job_meta=meta))
    assert info.value.field == "job_meta.launcher_spec.site-1.process.python_path"


def test_unknown_launcher_key_is_refused(backend):
    meta = {"launcher_spec": {"default": {"process": {"privileged": True}}}}
    with pytest.raises(InvalidJobSpec, match="privileged"):
        backend.prepare(request("job-priv", job_meta=meta))


def test_dataset_outside_allowed_roots_is_refused(backend, tmp_path):
    from backends.base import DatasetSpec, StudyRuntime

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    study = StudyRuntime(name="s1", datasets=(DatasetSpec(study="s1", name="d1", source=str(outside), mode="ro"),))
    with pytest.raises(InvalidJobSpec, match="allowed data roots") as info:
        backend.prepare(request("job-ds", study=study))
    assert info.value.field == "study.s1.datasets.d1.source"


@pytest.mark.parametrize("key", ["secret_env", "secret_mounts"])
def test_study_secrets_are_refused_rather_than_dropped(backend, key):
    from backends.base import SecretEnvRef, SecretMount, StudyRuntime

    value = (SecretEnvRef(name="T", source="S", key="k"),) if key == "secret_env" else (
        SecretMount(study="s1", name="m", source="/srv/s", mount_path="/run/s"),)
    with pytest.raises(InvalidJobSpec) as info:
        backend.prepare(request("job-sec", study=StudyRuntime(name="s1", **{key: value})))
    assert info.value.field == f"study.s1.{key}"


def test_missing_exe_module_is_refused(backend):
    args = client_job_args("job-x")
    del args["exe_module"]
    with pytest.raises(InvalidJobSpec, match="exe_module"):
        backend.prepare(JobRequest(site="site-1", job_pk="1", job_id="job-x", job_args=args))


def test_check_connection_checks_each_datasets_path(backend, data_root):
    from backends.base import DatasetSpec

    (data_root / "present").mkdir()
    datasets = [DatasetSpec(study="s1", name="here", source=str(data_root / "present"), mode="ro"),
                DatasetSpec(study="s1", name="gone", source=str(data_root / "gone"), mode="ro"),
                DatasetSpec(study="s1", name="outside", source="/etc", mode="ro")]
    checks = {c.name: c for c in backend.check_connection(datasets)}
    assert checks["dataset s1/here"].ok and "present" in checks["dataset s1/here"].detail
    assert not checks["dataset s1/gone"].ok and "does not exist" in checks["dataset s1/gone"].detail
    assert not checks["dataset s1/outside"].ok and "allowed data roots" in checks["dataset s1/outside"].detail


def test_check_connection_reports_workspace(backend, workspace, tmp_path):
    assert all(c.ok for c in backend.check_connection())
    missing = ProcessBackend(site="s", config=ProcessSiteConfig(workspace=str(tmp_path / "nope")))
    assert not [c for c in missing.check_connection() if c.name == "workspace"][0].ok


@pytest.mark.parametrize("handed_over", [b"", b'{"PATH": "/usr/bin", "FAKE_JOB', b"null"])
def test_a_runner_whose_launcher_died_before_handing_over_the_env_starts_nothing(tmp_path, handed_over):
    """A worker killed between starting the runner and writing the job's environment: the job must
    not run without its environment (it failed with exit 1 in the killed-worker scale test); the
    runner records nothing, so the launch lock counts as abandoned and the job is launched again."""
    import subprocess
    import sys

    from backends.process import RUNNER

    state = tmp_path / "job.json"
    state.write_text(json.dumps({"created_at": 0, "launcher_pid": 0}))
    marker = tmp_path / "ran"
    done = subprocess.run([sys.executable, "-I", RUNNER, str(state), str(tmp_path / "job.log"), "--",
                           "/bin/sh", "-c", f"touch {marker}"], input=handed_over, timeout=30)
    assert done.returncode == 2
    assert not marker.exists()
    assert json.loads(state.read_text()) == {"created_at": 0, "launcher_pid": 0}
