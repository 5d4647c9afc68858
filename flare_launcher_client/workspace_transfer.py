"""The FLARE Launcher job launcher for sites whose FLARE Launcher site is a Kubernetes site.

A Kubernetes job pod starts with an empty workspace: NVFlare's job process (worker_process.py /
runner_process.py) downloads it from its FL parent over CellNet when it starts and publishes its
results back when it ends, authorised by a token that the parent's WorkspaceTransferManager
(nvflare/app_opt/job_launcher/workspace_cell_transfer.py) issued for that job. NVFlare's own K8s
launcher registers each job there (k8s_launcher.py, launch_job); the FLARE Launcher service cannot
reach into the parent's cell, so this component does it, in the parent, exactly as NVFlare does:

- manager = WorkspaceTransferManager.get_or_create(fl_ctx.get_engine().cell)
- token = manager.add_job(job_id, <parent's args.workspace>), owner FQCN = manager.owner_fqcn
- both sent as launch credentials (job_args `workspace_transfer_token` / `workspace_owner_fqcn`):
  sealed through the launcher's broker, never stored, logged or returned; the Kubernetes backend puts
  the token in the job's credential Secret (env NVFL_WORKSPACE_TRANSFER_TOKEN) and the FQCN in the pod
  env (NVFL_WORKSPACE_OWNER_FQCN);
- the record is removed when the handle first reports a terminal state, on terminate, or when the
  launch raises (NVFlare's _release_job_resources). A pod that published its results has removed it
  already.

Which launcher a site uses is explicit, in the parent's `local/<name>__p_resources.json`:

    {"id": "flare_launcher", "path": "flare_launcher_client.workspace_transfer.FlareLauncherKubernetesJobLauncher",
     "args": {"url": "http://launcher:8000", "site": "site-1"}}

(same args as FlareLauncherJobLauncher). The server refuses a mismatch either way: an NVFlare job
for a Kubernetes site without the token (400 naming job_args.workspace_transfer_token), and these
credentials for a process or Docker site.

No Django; nvflare is imported only when a job is launched (it is always there in an FL parent).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from flare_launcher_client.launcher import ARGS_KEY, UNKNOWN, launcher_class

log = logging.getLogger("flare_launcher_client")

TOKEN_ARG = "workspace_transfer_token"
OWNER_ARG = "workspace_owner_fqcn"


def transfer_manager(fl_ctx) -> Any:
    """The parent cell's WorkspaceTransferManager (created on first use, as NVFlare does)."""
    from nvflare.app_opt.job_launcher.workspace_cell_transfer import (
        WorkspaceTransferManager,
    )

    engine = fl_ctx.get_engine()
    cell = getattr(engine, "cell", None) if engine else None
    if cell is None:
        raise RuntimeError("missing parent CellNet cell for workspace transfer")
    return WorkspaceTransferManager.get_or_create(cell)


def register(job_id: str, fl_ctx) -> tuple[str, str]:
    """Register `job_id` for workspace transfer from the parent's workspace; (token, owner FQCN)."""
    args = fl_ctx.get_prop(ARGS_KEY)
    workspace = getattr(args, "workspace", None)
    if not workspace:
        raise RuntimeError(f"missing {ARGS_KEY} (the parent's args.workspace) in FLContext")
    manager = transfer_manager(fl_ctx)
    return manager.add_job(job_id, workspace), manager.owner_fqcn


class _TransferHandle:
    """The launched job's handle, which also drops the job's transfer record once the job ended."""

    def __init__(self, inner: Any, manager: Any, job_id: str):
        super().__init__()
        self.inner = inner
        self.manager = manager
        self.transfer_job_id = job_id

    def __getattr__(self, name: str) -> Any:  # job, job_pk, job_id... of the inner handle
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def release(self) -> None:
        self.manager.remove_job(self.transfer_job_id)  # idempotent

    def poll(self) -> int:
        code = self.inner.poll()
        if code != UNKNOWN:
            self.release()
        return code

    def wait(self) -> None:
        self.inner.wait()  # returns only once the job ended
        self.release()

    def terminate(self, heartbeat_cleanup: bool = False) -> None:
        self.inner.terminate(heartbeat_cleanup=heartbeat_cleanup)  # raises when the launcher cannot be told: the job may still run
        self.release()


class _KubernetesJobLauncher:
    """FlareLauncherJobLauncher that registers each job for workspace transfer (module docstring)."""

    def launch_body(self, job_meta: dict, job_args: dict, fl_ctx) -> dict:
        body = super().launch_body(job_meta, job_args, fl_ctx)
        token, owner = register(body["job_id"], fl_ctx)
        body["job_args"] = {**body["job_args"], TOKEN_ARG: ["", token], OWNER_ARG: ["", owner]}
        return body

    def launch_job(self, job_meta: dict, fl_ctx) -> Any:
        job_id = job_meta.get("job_id")
        try:
            handle = super().launch_job(job_meta, fl_ctx)
        except BaseException:
            if job_id:
                _release_quietly(job_id, fl_ctx)
            raise
        return transfer_handle_class()(handle, transfer_manager(fl_ctx), job_id)


def _release_quietly(job_id: str, fl_ctx) -> None:
    try:
        transfer_manager(fl_ctx).remove_job(job_id)
    except Exception as exc:  # noqa: BLE001 - the launch error is what the caller must see
        log.warning("could not drop the workspace transfer record of job %s: %s", job_id, type(exc).__name__)


@functools.cache
def kubernetes_launcher_class() -> type:
    return type("FlareLauncherKubernetesJobLauncher", (_KubernetesJobLauncher, launcher_class()),
                {"__module__": __name__, "__doc__": __doc__})


@functools.cache
def transfer_handle_class() -> type:
    try:
        from nvflare.apis.job_launcher_spec import JobHandleSpec
    except ImportError:
        return _TransferHandle
    return type("FlareLauncherTransferHandle", (_TransferHandle, JobHandleSpec), {"__module__": __name__})


def __getattr__(name: str):
    if name == "FlareLauncherKubernetesJobLauncher":
        return kubernetes_launcher_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
