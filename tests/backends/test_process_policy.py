"""The process backend runs NVFlare's job command and nothing else, as an unprivileged user.

Each attack here was reproduced against the free-form backend: the submitter chose the module and
the flags (`-m timeit -s "import os; os.system('id')"`), a NUL byte left the job starting forever,
and the job ran as the dashboard's user (root) with its PATH.
"""

import json
import os
import stat

import pytest

from backends.base import BackendError, InvalidJobSpec, JobRequest, JobState
from backends.nvflare import JOB_MODULES
from backends.process import SAFE_PATH, ProcessBackend, ProcessSiteConfig
from tests.conftest import JOB_GID, JOB_UID, client_job_args, job_runtime, process_settings
from tests.util import wait_until

pytestmark = pytest.mark.embedded
CLIENT_MODULE = JOB_MODULES["client"]
SERVER_MODULE = JOB_MODULES["server"]
unprivileged = pytest.mark.skipif(not job_runtime()["unprivileged"],
                                  reason="needs root and a python the unprivileged job uid can run")


def make_backend(workspace, **settings) -> ProcessBackend:
    return ProcessBackend(site="site-1", config=ProcessSiteConfig.from_dict(process_settings(workspace, **settings)))


@pytest.fixture
def backend(workspace):
    return make_backend(workspace)


def request(job_id="job-p", *, args=None, role="client", options=()):
    return JobRequest(site="site-1", job_pk="7", job_id=job_id, role=role,
                      job_args=client_job_args(job_id) if args is None else args, set_options=tuple(options))


def args_with(**changes):
    args = client_job_args("job-p")
    args.update(changes)
    return args


def refused(backend, req) -> InvalidJobSpec:
    with pytest.raises(InvalidJobSpec) as info:
        backend.prepare(req)
    return info.value


# -- what runs: NVFlare's module, NVFlare's flags ----------------------------------------------------


def test_reproduced_timeit_attack_is_refused(backend):
    attack = args_with(exe_module=["-m", "timeit"], workspace=["-s", "import os; os.system('id')"])
    assert refused(backend, request(args=attack)).field in ("job_args.workspace", "job_args.exe_module")
    # Each half alone is refused too.
    assert refused(backend, request(args=args_with(exe_module=["-m", "timeit"]))).field == "job_args.exe_module"
    error = refused(backend, request(args=args_with(workspace=["-s", "import os; os.system('id')"])))
    assert error.field == "job_args.workspace" and "'-m'" in error.reason


@pytest.mark.parametrize("exe_module, phrase", [
    (["-m", "http.server"], "may not run on this site"),
    (["-m", "timeit"], "may not run on this site"),
    (["-m", SERVER_MODULE], "may not run on this site"),  # the server's module for a client job
    (["-c", "import os; os.system('id')"], "must be ['-m', <module>]"),
    (["-m", "fake_nvflare_job\0"], "NUL"),
    (["-m", "fake_nvflare_job\n"], "dotted Python module name"),
    (["-m", "os;id"], "dotted Python module name"),
    (["-m", "-c"], "dotted Python module name"),
    (["-m", ["timeit"]], "value must be a string"),
])
def test_exe_module_must_be_an_allowed_module(backend, exe_module, phrase):
    error = refused(backend, request(args=args_with(exe_module=exe_module)))
    assert error.field == "job_args.exe_module" and phrase in error.reason


@pytest.mark.parametrize("name, pair, phrase", [
    ("workspace", ["-s", "/ws"], "flag '-m'"),
    ("job_id", ["-m", "job-p"], "flag '-n'"),
    ("client_name", ["--set", "x=1"], "flag '-c'"),
    ("workspace", ["-m", "--help"], "must not start with '-'"),
    ("client_name", ["-c", "-p"], "must not start with '-'"),
    ("parent_url", ["-p", "tcp://localhost:8004\0"], "NUL"),
    ("startup_dir", ["-w", "/ws/startup\n-m"], "line-break"),
    ("auth_token", ["-t", "tok\0x"], "NUL"),
    ("bogus", ["-x", "1"], "unknown job process arg"),
])
def test_flags_and_values_are_nvflares(backend, name, pair, phrase):
    error = refused(backend, request(args=args_with(**{name: pair})))
    assert error.field == f"job_args.{name}" and phrase in error.reason


@pytest.mark.parametrize("name, pair, phrase", [
    ("service_port", ["--port", -1], "must not start with '-'"),
    ("service_host", ["-host", "localhost"], "flag '--host'"),
    ("root_url", ["-p", "grpc://x:1"], "flag '-u'"),
    ("app_root", ["-r", "-m"], "must not start with '-'"),
])
def test_server_flags_and_values_are_nvflares(backend, name, pair, phrase):
    args = server_args("job-s", exe_module=["-m", "fake_nvflare_job"], **{name: pair})
    error = refused(backend, request("job-s", args=args, role="server"))
    assert error.field == f"job_args.{name}" and phrase in error.reason


@pytest.mark.parametrize("options", [["-m", "x=1"], ["--help"], ["a=1\0"], ["a=1\nb=2"], ["novalue"], "exit=1"])
def test_set_options_cannot_inject_flags(backend, options):
    assert refused(backend, request(options=options)).field == "set_options"


def server_args(job_id, **changes):
    args = {
        "exe_module": ["-m", SERVER_MODULE], "workspace": ["-m", "/ws"],
        "startup_config_file": ["-s", "fed_server.json"], "app_root": ["-r", f"/ws/{job_id}/app_server"],
        "job_id": ["-n", job_id], "parent_url": ["-p", "tcp://localhost:8003"],
        "root_url": ["-u", "grpc://localhost:8002"], "service_host": ["--host", "localhost"],
        "service_port": ["--port", 8002], "auth_token": ["-t", job_id], "auth_signature": ["-ts", "sig"],
        "ssid": ["--ssid", "ssid-1"], "options": ["--set", " restore_snapshot=False print_conf=True"],
        "parent_conn_sec": ["--parent_conn_sec", "clear"],
    }
    args.update(changes)
    return args


def test_nvflares_own_modules_and_flags_are_accepted_per_role(workspace):
    backend = make_backend(workspace, allowed_modules=[])
    client = backend.prepare(request(args=args_with(exe_module=["-m", CLIENT_MODULE])))
    assert client.command[1:4] == ("-u", "-m", CLIENT_MODULE)
    server = backend.prepare(request("job-s", args=server_args("job-s"), role="server",
                                     options=["print_conf=True", "restore_snapshot=False"]))
    assert list(server.command[3:]) == [
        SERVER_MODULE, "-m", "/ws", "-s", "fed_server.json", "-r", "/ws/job-s/app_server", "-n", "job-s",
        "-p", "tcp://localhost:8003", "--parent_conn_sec", "clear", "-u", "grpc://localhost:8002",
        "--host", "localhost", "--port", "8002", "--set", "restore_snapshot=False", "print_conf=True"]
    # The fixture's module is not NVFlare's: without the staff setting it is refused.
    assert refused(backend, request()).field == "job_args.exe_module"


@pytest.mark.parametrize("modules", [["os; id"], ["a..b"], [""], "fake_nvflare_job", [1]])
def test_allowed_modules_setting_is_strict(workspace, modules):
    with pytest.raises(InvalidJobSpec) as info:
        make_backend(workspace, allowed_modules=modules)
    assert info.value.field == "process.allowed_modules"


# -- who it runs as -------------------------------------------------------------------------------


@unprivileged
def test_job_runs_as_the_configured_user_with_a_fixed_environment(backend, workspace, monkeypatch):
    monkeypatch.setenv("PATH", "/dashboard/evil/bin:/usr/bin")
    monkeypatch.setenv("HOME", "/root")
    handle = backend.launch(backend.prepare(request("job-uid")))
    observation = wait_until(lambda: (o := backend.inspect(handle)).state.is_terminal and o, message="job end")
    assert observation.state is JobState.SUCCEEDED, observation.logs_tail
    record = json.loads((workspace / "job-uid" / "job_record.json").read_text())
    assert (record["uid"], record["gid"]) == (JOB_UID, JOB_GID)
    assert set(record["groups"]) <= {JOB_GID}  # the dashboard's supplementary groups are dropped
    python_dir = os.path.dirname(job_runtime()["python"])
    assert record["env"]["PATH"] == f"{python_dir}:{SAFE_PATH}"
    assert record["env"]["HOME"] == str(workspace / "job-uid") and record["env"]["USER"] != "root"
    job_dir = os.stat(workspace / "job-uid")
    assert (job_dir.st_uid, job_dir.st_gid) == (JOB_UID, JOB_GID)
    state_dir = os.lstat(workspace / ".launcher")  # the runner's records stay out of the job's reach
    assert state_dir.st_uid == os.geteuid() and stat.S_IMODE(state_dir.st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="the workspace must be owned by root")
def test_root_is_refused_unless_allowed(workspace):
    # The root-owned workspace is the default user: refused, as is an explicit uid or gid 0.
    for settings in ({"user": ""}, {"user": "0:0"}, {"user": f"{JOB_UID}:0"}):
        backend = make_backend(workspace, **settings)
        error = refused(backend, request())
        assert error.field == "process.user" and "root" in error.reason
        assert not [c for c in backend.check_connection() if c.name == "job user"][0].ok
    allowed = make_backend(workspace, user="0:0", allow_root=True).prepare(request())
    assert (allowed.options["uid"], allowed.options["gid"]) == (0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_default_user_is_the_workspace_owner(workspace):
    os.chown(workspace, JOB_UID, JOB_GID)
    spec = make_backend(workspace, user="").prepare(request())
    assert (spec.options["uid"], spec.options["gid"]) == (JOB_UID, JOB_GID)


def test_settings_are_validated(workspace):
    for settings, field in (({"user": "nobody"}, "process.user"), ({"user": "1000"}, "process.user"),
                            ({"allow_root": "yes"}, "process.allow_root"),
                            ({"default_job_env": {"A": "x\0y"}}, "process.default_job_env.A")):
        with pytest.raises(InvalidJobSpec) as info:
            make_backend(workspace, **settings)
        assert info.value.field == field


def test_a_dashboard_that_is_not_root_runs_jobs_only_as_itself(workspace, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    monkeypatch.setattr(os, "getegid", lambda: 4242)
    error = refused(make_backend(workspace, user="1000:1000"), request())
    assert error.field == "process.user" and "cannot switch user" in error.reason
    spec = make_backend(workspace, user="4242:4242").prepare(request())
    assert spec.options["uid"] == 4242


# -- launch-time guards ---------------------------------------------------------------------------


def test_unlaunchable_command_fails_the_launch_instead_of_hanging(backend, workspace):
    import dataclasses

    spec = backend.prepare(request("job-nul"))
    spec = dataclasses.replace(spec, command=(*spec.command, "bad\0arg"))  # bypassing prepare
    with pytest.raises(BackendError, match="cannot start the job process") as info:
        backend.launch(spec)
    assert not info.value.retryable
    assert not (workspace / ".launcher" / f"{spec.name}.json").exists()  # no launch lock left behind


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_job_dir_symlinked_after_prepare_is_not_followed(backend, workspace, tmp_path):
    spec = backend.prepare(request("job-swap"))
    target = tmp_path / "victim"
    target.mkdir()
    (workspace / "job-swap").symlink_to(target)
    with pytest.raises(BackendError):
        backend.launch(spec)
    assert os.stat(target).st_uid == 0  # never chowned to the job user


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_state_dir_not_owned_by_the_dashboard_is_not_trusted(backend, workspace):
    handle = backend.launch(backend.prepare(request("job-state")))
    wait_until(lambda: backend.inspect(handle).state.is_terminal, message="job end")
    os.chown(workspace / ".launcher", JOB_UID, JOB_GID)  # e.g. replaced by job code owning the workspace
    assert backend.list_managed() == []
    with pytest.raises(BackendError, match="must be a directory owned by"):
        backend.launch(backend.prepare(request("job-next")))


@unprivileged
def test_the_job_environment_never_reaches_the_runner(workspace):
    """The runner keeps the dashboard's user: a PYTHONPATH (or LD_PRELOAD) in the site's or study's
    env must run code only in the job, as the job user, never in the runner."""
    hook = workspace / "hook"
    hook.mkdir(mode=0o755)
    marker = hook / "ran-as"
    marker.touch(mode=0o666)
    marker.chmod(0o666)
    (hook / "sitecustomize.py").write_text(f"import os\nopen({str(marker)!r}, 'a').write(f'{{os.getuid()}}\\n')\n")
    from tests.conftest import FIXTURES

    backend = make_backend(workspace, default_job_env={"PYTHONPATH": f"{hook}:{FIXTURES}"})
    handle = backend.launch(backend.prepare(request("job-env")))
    observation = wait_until(lambda: (o := backend.inspect(handle)).state.is_terminal and o, message="job end")
    assert observation.state is JobState.SUCCEEDED, observation.logs_tail
    assert marker.read_text().split() == [str(JOB_UID)]  # the job's python only


@pytest.mark.skipif(os.geteuid() != 0, reason="needs another uid than ours")
def test_check_connection_says_when_the_job_user_cannot_reach_the_workspace(workspace, tmp_path):
    assert [c for c in make_backend(workspace, user="65534:65534").check_connection() if c.name == "job user"][0].ok
    hidden = tmp_path / "private"  # pytest's tmp root is 0700
    hidden.mkdir()
    check = [c for c in make_backend(hidden, user="65534:65534").check_connection() if c.name == "job user"][0]
    assert not check.ok and "cannot enter" in check.detail
