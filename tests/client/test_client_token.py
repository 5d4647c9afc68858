"""Where the client takes the site token from: the FL parent's environment (FLARE_LAUNCHER_TOKEN or
`token_env`) or a file outside every NVFlare workspace (`token_file`), never a literal component
argument, and never from under a workspace's local/ or startup/ (symlinks resolved). The token is
never in a log line or an error message."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from flare_launcher_client import (
    ConfigurationError,
    FlareLauncherJobLauncher,
    LauncherError,
)
from tests.client.scripted import ScriptedLauncher

SECRET = "flr_SECRET-never-shown"
JOB_ARGS = {"exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"], "job_id": ["-n", "j1"],
            "client_name": ["-c", "site-1"]}


@pytest.fixture
def nvflare_workspace(tmp_path) -> Path:
    """An FL parent's workspace, as `nvflare poc prepare` lays it out; the parent runs in it."""
    ws = tmp_path / "poc" / "site-1"
    for sub in ("startup", "local", "transfer"):
        (ws / sub).mkdir(parents=True)
    return ws


def secret_file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


def test_the_token_comes_from_the_parents_environment(monkeypatch):
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", SECRET)
    launcher = FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1")
    assert launcher.client.session.headers["Authorization"] == f"Token {SECRET}"
    monkeypatch.setenv("SITE1_LAUNCHER_TOKEN", "flr_other")
    other = FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_env="SITE1_LAUNCHER_TOKEN")
    assert other.client.session.headers["Authorization"] == "Token flr_other"


def test_a_missing_token_is_a_configuration_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("FLARE_LAUNCHER_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match="environment variable FLARE_LAUNCHER_TOKEN is not set"):
        FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1")
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", "  ")
    with pytest.raises(ConfigurationError, match="FLARE_LAUNCHER_TOKEN"):
        FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1")


def test_a_literal_token_is_refused_without_showing_it(monkeypatch, caplog):
    """Not raised from the constructor: NVFlare would print the whole component, token included,
    with the error. Every launch is refused instead, with what to do."""
    monkeypatch.setenv("FLARE_LAUNCHER_TOKEN", "flr_env")
    scripted = ScriptedLauncher()
    try:
        launcher = FlareLauncherJobLauncher(url=scripted.url, site="site-1", token=SECRET)
        with pytest.raises(LauncherError) as info:
            launcher.launch_job({"job_id": "j1"}, {"job_process_args": JOB_ARGS})
    finally:
        scripted.close()
    message = str(info.value)
    assert "literal `token` argument is refused" in message and "FLARE_LAUNCHER_TOKEN" in message
    assert "token_file" in message and SECRET not in message
    assert "refused" in caplog.text and SECRET not in caplog.text
    assert scripted.requests == []  # nothing was sent


def test_a_token_file_outside_the_workspace_is_used(tmp_path, nvflare_workspace, monkeypatch):
    monkeypatch.chdir(nvflare_workspace)
    monkeypatch.delenv("FLARE_LAUNCHER_TOKEN", raising=False)
    path = secret_file(tmp_path / "etc" / "flare-launcher.token")
    launcher = FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_file=path)
    assert launcher.client.session.headers["Authorization"] == f"Token {SECRET}"


@pytest.mark.parametrize("where", ["local/flare.token", "startup/flare.token", "flare.token",
                                   "transfer/deep/flare.token"])
def test_a_token_file_in_the_parents_workspace_is_refused(nvflare_workspace, monkeypatch, where):
    monkeypatch.chdir(nvflare_workspace)
    path = secret_file(nvflare_workspace / where)
    with pytest.raises(ConfigurationError, match="workspace") as info:
        FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_file=path)
    assert SECRET not in str(info.value)


def test_a_token_file_in_any_workspaces_local_or_startup_is_refused_also_through_a_symlink(
        tmp_path, nvflare_workspace):
    # Not the parent's cwd, and reached through a symlink from outside: still a workspace's local/.
    target = secret_file(nvflare_workspace / "local" / "flare.token")
    link = tmp_path / "outside" / "flare.token"
    link.parent.mkdir()
    link.symlink_to(target)
    assert os.getcwd() != str(nvflare_workspace)
    with pytest.raises(ConfigurationError, match="local/ directory"):
        FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_file=str(link))
    # /usr/local-like paths are fine: a directory named local that is no workspace's.
    plain = secret_file(tmp_path / "usr" / "local" / "etc" / "flare.token")
    FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_file=plain)


def test_a_token_file_under_the_given_or_the_jobs_workspace_is_refused(tmp_path):
    ws = tmp_path / "ws"
    path = secret_file(ws / "secrets" / "flare.token")
    with pytest.raises(ConfigurationError, match="inside the NVFlare workspace"):
        FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_file=path, workspace=str(ws))
    scripted = ScriptedLauncher()
    try:
        launcher = FlareLauncherJobLauncher(url=scripted.url, site="site-1", token_file=path)
        with pytest.raises(LauncherError, match="not launching: token_file .* inside the NVFlare workspace"):
            launcher.launch_job({"job_id": "j1"}, {"job_process_args": {**JOB_ARGS, "workspace": ["-m", str(ws)]}})
    finally:
        scripted.close()
    assert scripted.requests == []


def test_a_missing_or_loose_token_file(tmp_path, caplog):
    with pytest.raises(ConfigurationError, match="no such file"):
        FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_file=str(tmp_path / "nope"))
    caplog.set_level(logging.WARNING)
    loose = Path(secret_file(tmp_path / "loose.token"))
    loose.chmod(0o644)
    FlareLauncherJobLauncher(url="http://127.0.0.1:1", site="site-1", token_file=str(loose))
    assert "readable by others (mode 644)" in caplog.text and SECRET not in caplog.text
