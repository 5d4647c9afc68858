"""DockerBackend.prepare(): a JobRequest checked and resolved into a LaunchSpec (launch-semantics.md
§2.1, §3). Validation and host path checks only; nothing here talks to the daemon. The pure pieces
are in backends/docker/specs.py and config.py, the filesystem checks in backends/docker/mounts.py.
"""

from __future__ import annotations

import os

from backends import nvflare
from backends.base import InvalidJobSpec, JobRequest, LaunchSpec, labels_for
from backends.common import check_workspace_child, workload_name
from backends.docker.binds import Root
from backends.docker.config import DockerSiteConfig, check_container_kwargs, check_env, check_secret_env_source
from backends.docker.mounts import (
    check_job_dir,
    check_nested,
    dataset_mount,
    job_user,
    python_path_dirs,
    secret_mount,
    shared_mount,
    workspace_dir,
)
from backends.docker.specs import (
    CONTAINER_ROOT,
    check_job_options,
    merge_run_options,
    rewrite_parent_url,
    workspace_mounts,
)


def launch_spec_for(
    request: JobRequest, *, backend_site: str, config: DockerSiteConfig, data_roots: tuple[Root, ...],
    shared_root: Root | None = None,
) -> LaunchSpec:
    """Validate `request` against the site's Docker settings and build its LaunchSpec. Raises
    InvalidJobSpec naming the offending field. `data_roots` and `shared_root` are the staff-trusted
    roots (Root.of: as configured and realpath'd); `backend_site` is the site the backend serves,
    used for the container labels."""
    site, job_id, study = request.site, request.job_id, request.study
    check_workspace_child(job_id, "job_id")
    nvflare.check_job_id(job_id)
    if request.role not in nvflare.ROLES:
        raise InvalidJobSpec("role", f"must be one of {', '.join(nvflare.ROLES)}")
    if request.job_meta.get("job_id") not in (None, job_id):
        raise InvalidJobSpec("job_meta.job_id", "does not match the job id being launched")

    job = check_job_options(
        nvflare.resolve_launcher_spec(request.job_meta, site, "docker"),
        f"job_meta.launcher_spec.{site}.docker",
        may_choose_entrypoint=config.allow_job_images or request.byoc,
    )
    resources = nvflare.portable_resources(request.job_meta, site)
    if "num_of_gpus" in job and job["num_of_gpus"] != resources.get("num_of_gpus", job["num_of_gpus"]):
        raise InvalidJobSpec(
            f"job_meta.launcher_spec.{site}.docker.num_of_gpus",
            "conflicts with resource_spec num_of_gpus; set the GPU count in one place",
        )
    study_image = nvflare.check_image(study.image, f"study.{study.name}.image") if study else None
    image = nvflare.resolve_image(job.get("image"), study_image, job_id=job_id, site=site)

    args = nvflare.normalise_job_args(request.job_args)
    if "job_id" in args and args["job_id"][1] is not None and str(args["job_id"][1]) != job_id:
        raise InvalidJobSpec("job_args.job_id", "does not match the job id being launched")
    shared_dir = None
    if "parent_url" in args and args["parent_url"][1] is not None:
        conn_sec = args.get("parent_conn_sec", ("", None))[1]
        url, shared_dir = rewrite_parent_url(args["parent_url"][1], conn_sec, site)
        args["parent_url"] = (args["parent_url"][0], url)
    python_path = job.get("python_path") or config.default_python_path
    command = nvflare.job_command(request.command, python_path, request.role, args,
                                   nvflare.check_set_options(request.set_options))

    workspace = workspace_dir(config.workspace)
    check_job_dir(workspace, job_id)
    roots = {"data_roots": data_roots, "workspace": workspace, "docker_host": config.docker_host}
    mounts = workspace_mounts(workspace, job_id)
    for dataset in study.datasets if study else ():
        mounts.append(dataset_mount(dataset, study.name, **roots))
    if shared_dir:
        sources = [m["Source"] for m in mounts[4:]] + [d.source for d in (study.datasets if study else ())]
        mounts.append(shared_mount(shared_dir, shared_root=shared_root, dataset_sources=sources, **roots))
    for secret in study.secret_mounts if study else ():  # §3.3 item 5: after datasets and shared-file
        mounts.append(secret_mount(secret, study.name, taken=[m["Target"] for m in mounts[1:]], **roots))
    check_nested(mounts)

    study_env = check_env(study.env, f"study.{study.name}.env") if study else {}
    env = {**config.default_job_env, **study_env, "USER": "nvflare", "HOME": "/tmp"}
    # Secret values join the credentials: redacted in the stored spec, added to the container's env
    # only at create. USER and HOME still win over them, as in NVFlare (§3.4).
    secrets = {name: value for name, value in secret_env(study, config).items() if name not in ("USER", "HOME")}
    pythonpath = python_path_dirs(workspace, job_id, site)
    if pythonpath:
        env["PYTHONPATH"] = ":".join(pythonpath)

    study_kwargs = (
        check_container_kwargs(study.docker_kwargs, f"study.{study.name}.docker_kwargs",
                               allow_host_ipc=config.allow_host_ipc)
        if study else {}
    )
    name = workload_name(site, job_id)
    workdir = f"{CONTAINER_ROOT}/{job_id}"
    labels = labels_for(site=backend_site, job_pk=request.job_pk, job_id=job_id, study=study.name if study else None)
    options = {
        **merge_run_options(config.default_job_container_kwargs, study_kwargs, job, resources),
        "image": image, "command": command, "name": name, "network": config.network,
        "mounts": mounts, "working_dir": workdir,
        "user": job_user(config.user, workspace, allow_root=config.allow_root), "labels": labels,
    }
    # Launcher-owned hardening, set after the merge so site/study kwargs cannot weaken it (their
    # cap_drop only counts once the site keeps Docker's default capabilities; security_opt is
    # never allowed there). Staff may relax each per site.
    if not config.allow_default_capabilities:
        options["cap_drop"] = ["ALL"]
    if not config.allow_privilege_escalation:
        options["security_opt"] = ["no-new-privileges:true"]
    return LaunchSpec(
        backend="docker", site=site, job_pk=str(request.job_pk), job_id=job_id, role=request.role,
        name=name, image=image, command=tuple(command), env={k: v for k, v in env.items() if k not in secrets},
        credentials={**secrets, **nvflare.credential_env(args)},
        labels=labels, study=study.name if study else None, datasets=study.datasets if study else (),
        workdir=workdir, options=options,
    )


def secret_env(study, config: DockerSiteConfig) -> dict[str, str]:
    """A study's secret_env on Docker (§3.4): each NAME gets the value of the launcher's environment
    variable named by `source` (`key` unused), which must be one the site's staff allowed
    (docker.secret_env_sources). A variable that is not set fails the launch, naming it; values
    are never logged or stored (they travel as credentials)."""
    values: dict[str, str] = {}
    for ref in study.secret_env if study else ():
        path = f"study.{study.name}.secret_env.{ref.name}"
        check_env({ref.name: ""}, f"study.{study.name}.secret_env")
        if ref.name in study.env:
            raise InvalidJobSpec(path, "is set in both env and secret_env")
        source = check_secret_env_source(ref.source, config.secret_env_sources, f"{path}.source")
        value = os.environ.get(source)
        if value is None:
            raise InvalidJobSpec(f"{path}.source", f"the launcher's environment variable {source} is not set")
        if "\0" in value:
            raise InvalidJobSpec(f"{path}.source", f"the launcher's environment variable {source} holds a NUL byte")
        values[ref.name] = value
    return values
