"""A real NVFlare federation on 127.0.0.1 for end-to-end tests: `nvflare poc prepare` from a project
of a server and clients on a free port (its own HOME, so ~/.nvflare stays private), the FL parents
started directly with the commands their startup/sub_start.sh runs (each in its own process group,
logs in files), jobs submitted and read with the `nvflare` CLI as the POC admin."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.util import wait_until

BIN = Path(sys.executable).parent  # the venv's nvflare and python
ROLE_MODULES = {"server": ("nvflare.private.fed.app.server.server_train", "fed_server.json"),
                "client": ("nvflare.private.fed.app.client.client_train", "fed_client.json")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Federation:
    def __init__(self, root: Path, clients: list[str]):
        self.root = root
        self.clients = clients
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.env = {**os.environ, "HOME": str(self.home), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        participants = [
            {"name": "server", "type": "server", "org": "nvidia", "fed_learn_port": self.port,
             "default_host": "localhost"},
            {"name": "admin@nvidia.com", "type": "admin", "org": "nvidia", "role": "project_admin"},
            *({"name": c, "type": "client", "org": "nvidia"} for c in clients),
        ]
        project = {"api_version": 3, "name": "example_project", "description": "FLARE Launcher e2e",
                   "participants": participants, "builders": [
                       {"path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
                        "args": {"template_file": ["master_template.yml"]}},
                       {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
                       {"path": "nvflare.lighter.impl.cert.CertBuilder"},
                       {"path": "nvflare.lighter.impl.signature.SignatureBuilder"}]}
        (root / "project.yml").write_text(yaml.safe_dump(project))
        self.cli("config", "-pw", str(root / "poc"))
        self.cli("poc", "prepare", "-i", str(root / "project.yml"), "--force")

    def workspace(self, name: str) -> Path:
        return self.root / "poc" / "example_project" / "prod_00" / name

    def cli(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run([str(BIN / "nvflare"), *args], env=self.env, cwd=self.root, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, f"nvflare {' '.join(args)}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
        return done.stdout

    def replace_launcher(self, name: str, component: dict) -> None:
        """Make `component` the site's only job launcher: NVFlare's process launcher is dropped from
        local/resources.json.default, and the component goes to local/flare__p_resources.json, which
        only the FL parent reads (job processes load resources.json*)."""
        local = self.workspace(name) / "local"
        resources = json.loads((local / "resources.json.default").read_text())
        resources["components"] = [c for c in resources["components"] if "job_launcher" not in c["path"]]
        (local / "resources.json.default").write_text(json.dumps(resources, indent=1))
        (local / "flare__p_resources.json").write_text(json.dumps({"format_version": 2, "components": [component]}))

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        module, config = ROLE_MODULES["server" if name == "server" else "client"]
        ws = self.workspace(name)
        extra = ["org=nvidia"] if name == "server" else [f"uid={name}", "org=nvidia"]
        log = open(self.root / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-u", "-m", module, "-m", str(ws), "-s", config, "--set", "secure_train=true", *extra,
             "config_folder=config"], cwd=ws, env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    def wait_connected(self, timeout: float = 60) -> None:
        server_log = self.root / "server.log"
        for client in self.clients:
            wait_until(lambda c=client: f"client {c} registered" in server_log.read_text(), timeout=timeout,
                       interval=0.2, message=f"{client} to register with the server")

    def submit(self, job_dir: Path) -> str:
        out = self.cli("job", "submit", "-j", str(job_dir))
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("job_id:"))

    def status(self, job_id: str) -> str:
        out = self.cli("job", "meta", job_id)
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip("│ ").split("│")]
            if len(cells) >= 3 and cells[0] == "Status" and cells[1] == "Status":
                return cells[2]
        return ""

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text()[-6000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
