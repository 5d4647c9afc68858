"""Validate on save: the checks of "Test connection" (and the probe's launch-time refusals), run when a
site is saved, every problem at once, each named by its setting.

One function gives the checks: connection_check.site_check_connection (the backend's own
check_connection on the bounded pool, plus `job_user_checks`, `study_kwargs_checks` and `engine_extras`
here). Test connection
shows its results; a save turns them into `SiteFindings`, judged on the catalog's validated unsaved
site (save=False) BEFORE the save's transaction, which then only writes (an engine awaited inside it
would hold SQLite's write lock for up to the deadline):

- errors (field -> messages) refuse the save (400 / the form's errors; nothing is written): a Docker
  network that does not exist, a workspace that is missing or not writable, a job user that would be
  root without allow_root, a study image not on the host (no pull allowed), study docker_kwargs the
  site's settings now refuse;
- warnings let it through: what could not be checked because the engine did not answer (unreachable,
  past the deadline, every check slot busy): "saved; could not check docker.network: ...". A save
  never waits on an engine longer than LAUNCHER_CHECK_DEADLINE_SECONDS, and an engine that is down
  for maintenance must not lock staff out of fixing the site's settings;
- a problem a non-staff caller cannot fix (a staff-only setting; policy refused any change to it
  already) is a warning for them, never a refusal of a change they were allowed to make.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from backends.base import CheckResult, InvalidJobSpec
from jobs.models import Site, Study
from jobs.services import policy

NOT_CHECKED = "not checked"  # the detail prefix of a check skipped because the engine did not answer


@dataclass
class SiteFindings:
    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def raise_errors(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


# ---------------------------------------------------------------------------------------------
# The checks beyond the backend's check_connection (both Test connection and a save run them)
# ---------------------------------------------------------------------------------------------


def job_user_checks(kind: str, backend: Any) -> list[CheckResult]:
    """The Docker job user: read from the workspace's owner unless docker.user is set, so it runs
    where the workspace is mounted (the request thread, or the worker with LAUNCHER_ENGINE_VIA_WORKER)."""
    results: list[CheckResult] = []
    if kind == "docker":
        from backends.docker.mounts import job_user, workspace_dir

        config = backend.config
        try:
            workspace = workspace_dir(config.workspace)
        except InvalidJobSpec:
            workspace = None  # the backend's "workspace" check says why
        if workspace is not None or config.user:
            try:
                user = job_user(config.user, workspace or "/", allow_root=config.allow_root)
                source = "docker.user" if config.user else f"the owner of {workspace} (docker.user is not set)"
                results.append(CheckResult(name="job user", ok=True, detail=f"jobs run as {user} ({source})"))
            except InvalidJobSpec as exc:
                owner = "" if config.user else f" (the owner of {workspace}: docker.user is not set)"
                results.append(CheckResult(name="job user", ok=False, detail=f"{exc.field}: {exc.reason}{owner}"))
            except OSError as exc:
                results.append(CheckResult(name="job user", ok=False,
                                           detail=f"docker.user: the workspace cannot be read ({exc.strerror})"))
    return results


def study_kwargs_checks(site: Site, backend: Any) -> list[CheckResult]:
    """Each study's docker_kwargs against the site's settings (database and settings only)."""
    results: list[CheckResult] = []
    if site.backend == "docker" and site.pk is not None:  # a site not created yet has no studies
        from backends.docker.config import check_container_kwargs

        config = backend.config
        for study in Study.objects.filter(site=site).exclude(docker_kwargs={}):
            try:
                check_container_kwargs(study.docker_kwargs or {}, "docker_kwargs", allow_host_ipc=config.allow_host_ipc)
            except InvalidJobSpec as exc:
                results.append(CheckResult(name=f"study {study.name} docker_kwargs", ok=False,
                                           detail=f"{exc.field}: {exc.reason}"))
    return results


def study_images(site: Site) -> list[tuple[str, str]]:
    """(study, image) pairs to look up on the engine; read in the request thread (the pool never
    touches the database)."""
    if site.backend != "docker" or site.pk is None:  # a site not created yet has no studies
        return []
    return list(Study.objects.filter(site=site).exclude(image="").values_list("name", "image"))


def engine_extras(backend: Any, images: Iterable[Iterable[str]]) -> list[CheckResult]:
    """Runs on the pool (or the worker) after backend.check_connection: each study image present on the Docker host
    (launch never pulls unless allow_pull)."""
    images = list(images)
    if not images:
        return []
    from docker.errors import ImageNotFound

    from backends.base import BackendError

    results = []
    try:
        client = backend.api.client()
    except BackendError as exc:
        return [CheckResult(name=f"study {s} image", ok=False, detail=f"{NOT_CHECKED}: {exc}") for s, _ in images]
    for study, image in images:
        name = f"study {study} image"
        try:
            with backend.api.errors(f"look up image {image}"):
                try:
                    client.images.get(image)
                    results.append(CheckResult(name=name, ok=True, detail=f"{image} present"))
                except ImageNotFound:
                    pulls = backend.config.allow_pull
                    results.append(CheckResult(name=name, ok=pulls, detail=(
                        f"{image} is not on the Docker host" + (" (pulled at launch: allow_pull)" if pulls else
                                                                  "; no pull happens (load it on the host, or "
                                                                  "let the site allow pulls)"))))
        except BackendError as exc:
            results.append(CheckResult(name=name, ok=False, detail=f"{NOT_CHECKED}: {exc}"))
    return results


# ---------------------------------------------------------------------------------------------
# From check results to a save's errors and warnings
# ---------------------------------------------------------------------------------------------


def _field_of(site: Site, result: CheckResult) -> tuple[str, bool]:
    """(the setting a failed check names, whether it could really be checked)."""
    from jobs.services.connection_check import BUSY, DEADLINE

    kind, name, detail = site.backend, result.name, result.detail
    if name in (BUSY, DEADLINE) or detail.startswith(NOT_CHECKED):
        target = {"docker": "docker.network", "kubernetes": "kubernetes"}.get(kind, kind)
        return (target if name in (BUSY, DEADLINE, "network") else _study_field(name)), False
    if kind == "docker":
        if name == "docker daemon":
            return "docker.docker_host", False
        if name in ("network", "workspace"):
            return f"docker.{name}", True
        if name == "job user":
            return "docker.user", True
    elif kind == "process":
        if name == "workspace":
            ws = getattr(site, "_checked_workspace", "")
            return "process.workspace", bool(ws) and os.path.exists(ws)  # a new one is created at launch
        if name == "python":
            return "process.default_python_path", True
        if name == "job user":
            return detail.split(":", 1)[0] if detail.startswith("process.") else "process.user", True
    elif kind == "kubernetes":
        return "kubernetes", False  # the API server's answers (namespace, RBAC) are all engine-dependent
    if name.startswith("study "):
        return _study_field(name), True
    if name.startswith("dataset "):
        return f"datasets.{name.removeprefix('dataset ')}", True
    return kind, True


def _study_field(name: str) -> str:
    parts = name.split(" ")  # "study <name> image" / "study <name> docker_kwargs"
    return f"study.{parts[1]}.{parts[2]}" if len(parts) == 3 and parts[0] == "study" else name


def findings(site: Site, results: list[CheckResult], *, actor: Any = None) -> SiteFindings:
    out = SiteFindings()
    site_admin = not policy.is_staff(actor)
    for result in results:
        if result.ok:
            continue
        target, checked = _field_of(site, result)
        if not checked:
            out.warnings.append(f"saved; could not check {target}: {result.detail}")
        elif site_admin and not target.startswith("study.") and not policy._site_admin_may(target):
            out.warnings.append(f"{target}: {result.detail} (a platform staff setting)")
        else:
            out.errors.setdefault(target, []).append(result.detail)
    return out


def snapshot(site: Site) -> dict[str, Any]:
    """What decides whether a save touched the settings the checks judge (take it before the change)."""
    # As stored: a raw block and its normalised form (defaults filled in) compare equal.
    from jobs.services.catalog import _normalised_block
    from jobs.services.sites import site_backend_settings

    return {"backend": site.backend, "settings": _normalised_block(site.backend, site_backend_settings(site))}


def save_findings(site: Site, *, actor: Any = None, before: dict[str, Any] | None = None) -> SiteFindings:
    """The checks' verdict on the settings a save would write. `site`: the catalog's validated,
    unsaved instance (catalog.site_create / site_update with save=False). Run it BEFORE the save's
    transaction: it waits on the engine (up to LAUNCHER_CHECK_DEADLINE_SECONDS), and on SQLite an
    open transaction holds the write lock, stalling every other writer (the watcher, other saves).
    `before` (snapshot(), None for a new site): when the save changes neither the backend nor its
    settings block (e.g. only the data roots), a problem it did not cause is a warning, not a
    refusal of an unrelated edit."""
    from jobs.services.connection_check import site_check_connection
    from jobs.services.sites import site_backend_settings

    if site.backend == "process":
        site._checked_workspace = site_backend_settings(site).get("workspace") or ""
    result = findings(site, site_check_connection(site, []), actor=actor)
    if before is not None and before == snapshot(site):
        result.warnings += [f"{target}: {message} (not changed by this save)"
                            for target, messages in result.errors.items() for message in messages]
        result.errors = {}
    return result


def check_site_save(site: Site, *, actor: Any = None, before: dict[str, Any] | None = None) -> list[str]:
    """save_findings, before the save's transaction: raise ValidationError naming every setting that
    fails (nothing is written), else return the warnings to show with the saved site."""
    result = save_findings(site, actor=actor, before=before)
    result.raise_errors()
    return result.warnings
