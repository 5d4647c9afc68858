"""The job command line against NVFlare's own rendering (nvflare.utils.job_launcher_utils, the real
package): the `options` JOB_PROCESS_ARGS entry the parents build (`("--set", " ... print_conf=True")`)
reaches the job as NVFlare's process launcher passes it, and stays under our flag-injection checks."""

from __future__ import annotations

import shlex
import sys

import pytest

from backends import nvflare
from backends.base import InvalidJobSpec

pytestmark = pytest.mark.embedded

CLIENT_ARGS = {
    "exe_module": ("-m", "nvflare.private.fed.app.client.worker_process"),
    "job_id": ("-n", "3f2a"),
    "client_name": ("-c", "site-1"),
    "auth_token": ("-t", "tok-SECRET"),
    "auth_signature": ("-ts", "sig-SECRET"),
    "ssid": ("-d", "ssid-SECRET"),
    "workspace": ("-m", "/ws/site-1"),
    "startup_dir": ("-w", "/ws/site-1/startup"),
    "parent_url": ("-p", "tcp://localhost:8004"),
    "scheme": ("-scheme", "grpc"),
    "target": ("-g", "localhost:8002"),
    "startup_config_file": ("-s", "fed_client.json"),
    # as client_executor.py builds it: " " + each args.set item, then " print_conf=True"
    "options": ("--set", " secure_train=false uid=site-1 print_conf=True"),
    "parent_conn_sec": ("--parent_conn_sec", "clear"),
}
SERVER_ARGS = {
    "job_id": ("-n", "3f2a"),
    "exe_module": ("-m", "nvflare.private.fed.app.server.runner_process"),
    "workspace": ("-m", "/ws/server"),
    "startup_config_file": ("-s", "fed_server.json"),
    "app_root": ("-r", "/ws/server/3f2a/app_server"),
    "auth_token": ("-t", "3f2a"),
    "auth_signature": ("-ts", "sig-SECRET"),
    "parent_url": ("-p", "tcp://localhost:8004"),
    "root_url": ("-u", "grpc://localhost:8002"),
    "service_host": ("--host", "localhost"),
    "service_port": ("--port", "8002"),
    "ssid": ("--ssid", "ssid-SECRET"),
    # as server_engine.py builds it (restore_snapshot and print_conf after args.set)
    "options": ("--set", " secure_train=false restore_snapshot=False print_conf=True"),
}


def nvflare_argv(role: str, args: dict) -> list[str]:
    """What NVFlare's process launcher runs: generate_*_command(), then shlex.split(command, True)."""
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.utils.job_launcher_utils import generate_client_command, generate_server_command

    ctx = FLContext()
    ctx.set_prop(FLContextKey.JOB_PROCESS_ARGS, args, private=True, sticky=False)
    command = generate_server_command(ctx) if role == "server" else generate_client_command(ctx)
    return shlex.split(command, True)


@pytest.mark.parametrize("role, args", [("client", CLIENT_ARGS), ("server", SERVER_ARGS)])
def test_the_command_is_nvflares_process_launcher_command(role, args):
    # Parents pass args.set as set_options too: rendered once, from `options` (its superset).
    set_items = ("secure_train=false",)
    ours = nvflare.job_command(None, sys.executable, role, nvflare.normalise_job_args(args, role), set_items)
    theirs = nvflare_argv(role, args)
    assert ours[1] == "-u"  # unbuffered, so logs tails are complete (NVFlare's Docker launcher does the same)
    assert [ours[0], *ours[2:]] == theirs
    assert ours.count("--set") == 1 and "print_conf=True" in ours
    assert not any("SECRET" in item for item in ours)


def test_without_options_the_set_list_is_rendered_as_nvflares_container_launchers_do():
    args = {k: v for k, v in CLIENT_ARGS.items() if k != "options"}
    argv = nvflare.render_command("/usr/local/bin/python", "client", args, ("a=1", "b=2"))
    assert argv[-3:] == ["--set", "a=1", "b=2"]


@pytest.mark.parametrize("pair, message", [
    (("-s", " print_conf=True"), "flag '--set'"),
    (("--set", " --inject=1 print_conf=True"), "not starting with '-'"),
    (("--set", " a=1 noequals"), "'key=value'"),
    (("--set", " a=1\nb=2"), "NUL or line-break"),
    (("--set", " a='unclosed"), "cannot be split"),
    (("--set", 5), "string of space-separated"),
])
def test_bad_options_are_refused_naming_the_field(pair, message):
    with pytest.raises(InvalidJobSpec) as info:
        nvflare.normalise_job_args({**CLIENT_ARGS, "options": pair}, "client")
    assert info.value.field == "job_args.options" and message in info.value.reason


def test_options_are_checked_again_when_rendered():
    # render_command() re-checks whoever built the args (a stored request, a backend's own caller)
    with pytest.raises(InvalidJobSpec):
        nvflare.render_command("/usr/bin/python3", "client", {**CLIENT_ARGS, "options": ("--set", "-x=1")})
