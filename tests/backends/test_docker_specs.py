"""Pure mapping tests for backends/docker/specs.py and config.py: literal inputs, literal expected
outputs, no daemon (the observation mapping: test_docker_observe.py)."""

from __future__ import annotations

import pytest

from backends.base import InvalidJobSpec, LaunchSpec
from backends.common import workload_name as container_name
from backends.docker.config import DockerSiteConfig
from backends.docker.specs import (
    CONTAINER_ROOT,
    check_job_options,
    create_kwargs,
    merge_run_options,
    parse_shm_size,
    rewrite_parent_url,
    workspace_mounts,
)

# ---------------------------------------------------------------------------------------------
# Site configuration
# ---------------------------------------------------------------------------------------------


def test_config_defaults_round_trip():
    config = DockerSiteConfig.from_dict({"workspace": "/srv/ws"})
    assert config.to_dict() == {
        "workspace": "/srv/ws", "network": "nvflare-network", "timeout": 30,
        "default_python_path": "/usr/local/bin/python", "default_job_container_kwargs": {},
        "default_job_env": {}, "user": "", "allow_root": False, "allow_job_images": False,
        "allow_host_ipc": False, "allow_pull": False, "docker_host": "", "shared_file_root": "",
        "allow_default_capabilities": False, "allow_privilege_escalation": False, "allow_host_network": False,
        "secret_env_sources": [],
    }
    assert DockerSiteConfig.from_dict(config.to_dict()) == config


def test_config_python_path_alias():
    assert DockerSiteConfig.from_dict({"python_path": "/opt/py/bin/python"}).default_python_path == "/opt/py/bin/python"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"workspace": "relative/ws"}, "docker.workspace"),
        ({"workspace": "/srv/ws/../etc"}, "docker.workspace"),
        ({"workspace": "/srv/./ws"}, "docker.workspace"),
        ({"workspace": "/"}, "docker.workspace"),
        ({"network": ""}, "docker.network"),
        ({"timeout": 0}, "docker.timeout"),
        ({"timeout": True}, "docker.timeout"),
        ({"default_python_path": "  "}, "docker.default_python_path"),
        ({"default_job_env": {"A": 1}}, "docker.default_job_env.A"),
        ({"default_job_env": {"PYTHONPATH": "/x"}}, "docker.default_job_env.PYTHONPATH"),
        ({"default_job_env": {"NVFLARE_JOB_AUTH_TOKEN": "x"}}, "docker.default_job_env.NVFLARE_JOB_AUTH_TOKEN"),
        ({"user": "nvflare"}, "docker.user"),
        ({"user": "0:0"}, "docker.user"),
        ({"allow_root": "yes"}, "docker.allow_root"),
        ({"docker_host": "/var/run/docker.sock"}, "docker.docker_host"),
        ({"privileged": True}, "docker.privileged"),
        ({"allow_default_capabilities": "yes"}, "docker.allow_default_capabilities"),
        ({"allow_privilege_escalation": 1}, "docker.allow_privilege_escalation"),
        ({"shared_file_root": "relative"}, "docker.shared_file_root"),
        ({"shared_file_root": "/"}, "docker.shared_file_root"),
        ({"shared_file_root": "/srv/shared/../ws"}, "docker.shared_file_root"),
        ({"shared_file_root": "/srv/ws", "workspace": "/srv/ws"}, "docker.shared_file_root"),
        ({"shared_file_root": "/srv", "workspace": "/srv/ws"}, "docker.shared_file_root"),
        ({"shared_file_root": "/srv/ws/shared", "workspace": "/srv/ws"}, "docker.shared_file_root"),
        ({"shared_file_root": "/var/run"}, "docker.shared_file_root"),
        ({"shared_file_root": "/run"}, "docker.shared_file_root"),
        ({"shared_file_root": "/var"}, "docker.shared_file_root"),
        ({"shared_file_root": "/srv/engine", "docker_host": "unix:///srv/engine/d.sock"}, "docker.shared_file_root"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(data, field):
    with pytest.raises(InvalidJobSpec) as error:
        DockerSiteConfig.from_dict(data)
    assert error.value.field == field


def test_config_shared_file_root_and_hardening_switches():
    config = DockerSiteConfig.from_dict({"workspace": "/srv/ws", "shared_file_root": "/srv/shared/",
                                         "allow_default_capabilities": True, "allow_privilege_escalation": True})
    assert (config.shared_file_root, config.allow_default_capabilities, config.allow_privilege_escalation) == (
        "/srv/shared", True, True)
    assert DockerSiteConfig.from_dict({"workspace": "/srv/ws", "shared_file_root": "/srv/ws2"}).shared_file_root == "/srv/ws2"


def test_config_root_user_needs_allow_root():
    assert DockerSiteConfig.from_dict({"user": "0:0", "allow_root": True}).user == "0:0"


REFUSED_SITE_KEYS = [
    # launcher-owned
    ("volumes", {"/": {"bind": "/host"}}, "launcher-owned"),
    ("mounts", [], "launcher-owned"),
    ("network", "host", "launcher-owned"),
    ("environment", {}, "launcher-owned"),
    ("command", "sh", "launcher-owned"),
    ("name", "x", "launcher-owned"),
    ("detach", False, "launcher-owned"),
    ("auto_remove", True, "launcher-owned"),
    ("user", "0:0", "launcher-owned"),
    ("working_dir", "/", "launcher-owned"),
    ("image", "x", "launcher-owned"),
    ("labels", {}, "launcher-owned"),
    # isolation-breaking
    ("privileged", True, "never allowed"),
    ("pid_mode", "host", "never allowed"),
    ("network_mode", "host", "never allowed"),
    ("cap_add", ["SYS_ADMIN"], "never allowed"),
    ("devices", ["/dev/sda:/dev/sda"], "never allowed"),
    ("device_cgroup_rules", ["a *:* rwm"], "never allowed"),
    ("security_opt", ["seccomp=unconfined"], "never allowed"),
    ("volumes_from", ["other"], "never allowed"),
    ("userns_mode", "host", "never allowed"),
    ("uts_mode", "host", "never allowed"),
    ("cgroupns", "host", "never allowed"),
    ("ipc_mode", "host", "allow_host_ipc"),
    ("ipc_mode", "container:other", "never allowed"),
    ("tmpfs", {"/var/run/docker.sock": ""}, "Docker socket"),
    # unknown to the SDK
    ("ports", {"80/tcp": 80}, "not supported by the installed Docker SDK"),
    ("shm_sise", "1g", "not supported by the installed Docker SDK"),
]


@pytest.mark.parametrize(("key", "value", "phrase"), REFUSED_SITE_KEYS, ids=[f"{k}={v}" for k, v, _ in REFUSED_SITE_KEYS])
def test_site_default_kwargs_refuse_key(key, value, phrase):
    with pytest.raises(InvalidJobSpec) as error:
        DockerSiteConfig.from_dict({"default_job_container_kwargs": {key: value}})
    assert error.value.field == f"docker.default_job_container_kwargs.{key}"
    assert phrase in error.value.reason
    assert key in error.value.reason


def test_site_default_kwargs_accept_safe_options_and_host_ipc_when_allowed():
    kwargs = {"shm_size": "2g", "cap_drop": ["ALL"], "pids_limit": 256, "ipc_mode": "host",
              "device_requests": [{"Count": 1, "Capabilities": [["gpu"]]}]}
    config = DockerSiteConfig.from_dict({"default_job_container_kwargs": kwargs, "allow_host_ipc": True})
    assert config.default_job_container_kwargs == kwargs


# ---------------------------------------------------------------------------------------------
# Job-controlled options
# ---------------------------------------------------------------------------------------------

ALLOWED = "entrypoint, image, num_of_gpus, python_path, shm_size"


@pytest.mark.parametrize("key", ["privileged", "pid_mode", "ipc_mode", "devices", "cap_add", "security_opt",
                                 "network_mode", "volumes", "device_requests", "mem_limit", "nano_cpus", "user"])
def test_job_options_refuse_anything_outside_the_allowlist(key):
    with pytest.raises(InvalidJobSpec) as error:
        check_job_options({key: "x", "image": "img"}, "job_meta.launcher_spec.site-1.docker", may_choose_entrypoint=True)
    assert error.value.reason == f"unsupported job-controlled Docker option(s) ['{key}']; allowed: {ALLOWED}"
    assert error.value.field == f"job_meta.launcher_spec.site-1.docker.{key}"


def test_job_options_normalised():
    options = check_job_options(
        {"image": "img:1", "python_path": "/py", "num_of_gpus": 0, "shm_size": "1.5k", "entrypoint": ["/bin/sh"]},
        "p", may_choose_entrypoint=True,
    )
    assert options == {"image": "img:1", "python_path": "/py", "num_of_gpus": 0, "shm_size": 1536, "entrypoint": ["/bin/sh"]}


def test_job_entrypoint_needs_byoc():
    with pytest.raises(InvalidJobSpec, match="lacks locally authorized BYOC"):
        check_job_options({"entrypoint": "/bin/sh"}, "p", may_choose_entrypoint=False)


@pytest.mark.parametrize(
    ("block", "phrase"),
    [
        ({"image": 0}, "must be a string, got int"),
        ({"image": False}, "must be a string, got bool"),
        ({"image": []}, "must be a string, got list"),
        ({"python_path": "   "}, "non-blank"),
        ({"num_of_gpus": True}, "must be an integer"),
        ({"num_of_gpus": -1}, "must be an integer >= 0"),
        ({"entrypoint": []}, "non-empty list"),
        ({"entrypoint": ["sh", " "]}, "non-blank"),
    ],
)
def test_job_option_values_checked(block, phrase):
    with pytest.raises(InvalidJobSpec, match=phrase):
        check_job_options(block, "p", may_choose_entrypoint=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (2**63 - 1, 2**63 - 1), ("64", 64), ("64b", 64), ("2k", 2048), ("2KB", 2048), ("1m", 2**20),
     ("1.5g", 3 * 2**29), ("8589934591g", 8589934591 * 2**30)],
)
def test_shm_size_accepted(value, expected):
    assert parse_shm_size(value, "shm_size") == expected


@pytest.mark.parametrize("value", [True, -1, 2**63, "9223372036854775807", "1t", "1 g", "+1g", "-1g", "1e3", ".5g",
                                   "", "g", 1.5, None])
def test_shm_size_rejected(value):
    with pytest.raises(InvalidJobSpec):
        parse_shm_size(value, "shm_size")


# ---------------------------------------------------------------------------------------------
# Merge and resources (§3.7)
# ---------------------------------------------------------------------------------------------

SITE_GPU = [{"Count": -1, "Capabilities": [["gpu"]]}]


def test_merge_precedence_site_study_job():
    merged = merge_run_options({"shm_size": 1, "pids_limit": 10}, {"shm_size": 2, "cpu_shares": 5},
                               {"shm_size": 3, "entrypoint": "/bin/sh", "image": "ignored"}, {})
    assert merged == {"shm_size": 3, "pids_limit": 10, "cpu_shares": 5, "entrypoint": "/bin/sh"}


@pytest.mark.parametrize(
    ("job", "resources", "expected"),
    [
        ({"num_of_gpus": 2}, {}, [{"Count": 2, "Capabilities": [["gpu"]]}]),
        ({}, {"num_of_gpus": 1}, [{"Count": 1, "Capabilities": [["gpu"]]}]),
        ({"num_of_gpus": 0}, {}, None),
        ({}, {"num_of_gpus": 0}, None),
        ({}, {}, SITE_GPU),
    ],
)
def test_gpu_precedence(job, resources, expected):
    merged = merge_run_options({"device_requests": SITE_GPU}, {}, job, resources)
    assert merged.get("device_requests") == expected


def test_portable_cpu_and_memory_override_site_values():
    merged = merge_run_options({"nano_cpus": 1, "mem_limit": "1g"}, {}, {}, {"num_of_cpus": 2, "memory": "512Mi"})
    assert merged == {"nano_cpus": 2_000_000_000, "mem_limit": 512 * 2**20}


# ---------------------------------------------------------------------------------------------
# Names, parent URL, mounts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("site", "job_id", "name"),
    [("site-1", "ABC-123", "site-1-abc-123"), ("Site 1", "j.o_b", "site-1-j.o_b"), ("-", "-", "nvflare-job"),
     ("site@1", "x/y", "site-1-x-y")],
)
def test_container_name(site, job_id, name):
    assert container_name(site, job_id) == name


@pytest.mark.parametrize(
    ("url", "sec", "expected"),
    [
        ("tcp://localhost:8004", "clear", ("tcp://site-1:8004", None)),
        ("tcp://localhost:8004", None, ("tcp://site-1:8004", None)),
        ("stcp://10.0.0.1:8004/p?q=1#f", "mtls", ("stcp://site-1:8004/p?q=1#f", None)),
        ("shared-file://0/srv/share?x=1", "clear", ("shared-file://0/srv/share?x=1", "/srv/share")),
    ],
)
def test_parent_url_rewritten(url, sec, expected):
    assert rewrite_parent_url(url, sec, "site-1") == expected


@pytest.mark.parametrize(
    ("url", "sec", "phrase"),
    [
        ("tcp://localhost:8004", "tls", "'clear' or 'mtls'"),
        ("tcp://localhost:8004", "mtls", "does not match"),
        ("stcp://localhost:8004", "clear", "does not match"),
        ("tcp://localhost", "clear", "host and a port"),
        ("tcp://:8004", "clear", "host and a port"),
        ("tcp://localhost:port", "clear", "numeric"),
        ("http://localhost:8004", "clear", "unsupported scheme"),
        ("shared-file://0/var/tmp/nvflare/workspace/x", "clear", "must not be under"),
        ("shared-file://0/srv/../etc", "clear", "normalised"),
        ("shared-file://0/srv", "mtls", "needs parent_conn_sec 'clear'"),
    ],
)
def test_parent_url_rejected(url, sec, phrase):
    with pytest.raises(InvalidJobSpec, match=phrase):
        rewrite_parent_url(url, sec, "site-1")


def test_workspace_mounts_in_order():
    assert workspace_mounts("/srv/ws", "job-1") == [
        {"Type": "tmpfs", "Target": CONTAINER_ROOT, "ReadOnly": False, "TmpfsOptions": {"Mode": 0o1777}},
        {"Type": "bind", "Source": "/srv/ws/startup", "Target": f"{CONTAINER_ROOT}/startup", "ReadOnly": True},
        {"Type": "bind", "Source": "/srv/ws/local", "Target": f"{CONTAINER_ROOT}/local", "ReadOnly": True},
        {"Type": "bind", "Source": "/srv/ws/job-1", "Target": f"{CONTAINER_ROOT}/job-1", "ReadOnly": False},
    ]


def test_create_kwargs_joins_credentials_only_into_environment():
    spec = LaunchSpec(backend="docker", site="s", job_pk="1", job_id="j", role="client", name="s-j", image="i",
                      command=("py",), env={"A": "1"}, credentials={"NVFLARE_JOB_AUTH_TOKEN": "t"}, labels={},
                      options={"image": "i", "name": "s-j"})
    assert create_kwargs(spec) == {"image": "i", "name": "s-j", "environment": {"A": "1", "NVFLARE_JOB_AUTH_TOKEN": "t"}}


# ---------------------------------------------------------------------------------------------
# Docker state -> Observation
# ---------------------------------------------------------------------------------------------
