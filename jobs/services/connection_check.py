"""A site's "test connection", bounded: it never holds a request thread past a deadline.

The backend's checks run on a small per-process pool (CHECK_SLOTS threads). The caller waits at most
LAUNCHER_CHECK_DEADLINE_SECONDS, then answers with a "no answer yet" result while the check finishes
in the background (each backend call is itself bounded by the site's timeout, at most 120 s). When
every slot is taken, further calls are answered at once with a "busy" result: a slow docker_host
cannot take every request thread of the process.

With LAUNCHER_ENGINE_VIA_WORKER (a web process without engine access) the engine's part (the
backend's checks, the job user read from the workspace, the study images) runs on a Celery worker
instead (jobs.tasks.site_check_task, through jobs.services.engine_calls), awaited as long; what
needs only the database stays here.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from typing import Any

from django.conf import settings

from backends.base import BackendError, CheckResult, DatasetSpec
from jobs.models import Dataset, Site
from jobs.services.engine_calls import (
    backend_of,
    engine_call,
    site_ref,
    via_worker,
)
from jobs.services.sites import site_backend

CHECK_SLOTS = 2  # concurrent checks per process
_pool = ThreadPoolExecutor(max_workers=CHECK_SLOTS, thread_name_prefix="site-check")
_slots = threading.BoundedSemaphore(CHECK_SLOTS)
BUSY = "busy"
DEADLINE = "deadline"


def site_check_connection(site: Site, datasets: list[dict[str, Any]] | None = None) -> list[CheckResult]:
    """The site backend's connection checks, with `datasets` (default: all of the site's datasets)
    where the backend can see their sources, then jobs.services.site_checks' checks (the job user,
    study images and docker_kwargs): the one function both Test connection and a site save run.
    Returns within the deadline; a `busy` or `deadline` result (ok=False) says why not."""
    from jobs.services.site_checks import (
        engine_extras,
        job_user_checks,
        study_images,
        study_kwargs_checks,
    )

    backend = site_backend(site)
    images = study_images(site)
    # Read in this thread: the pool threads never touch the database.
    specs = ([DatasetSpec(**d) for d in datasets] if datasets is not None else [
        DatasetSpec(study=d.study.name, name=d.name, source=d.source, mode=d.mode)
        for d in Dataset.objects.filter(study__site=site).select_related("study")])
    # in this thread: the job user is a file lookup (on the worker when it runs the engine's part),
    # the docker_kwargs come from the site's studies
    local = ([] if via_worker() else job_user_checks(site.backend, backend)) + study_kwargs_checks(site, backend)
    if not _slots.acquire(blocking=False):
        return local + [CheckResult(name=BUSY, ok=False, detail=(
            f"{CHECK_SLOTS} connection tests are already running in this process (a slow or unreachable "
            "engine?); try again in a few seconds."))]
    if via_worker():
        try:  # the slot bounds what one web process asks of the workers, as it bounds its own threads
            return _on_worker(site, specs, images, local)
        finally:
            _slots.release()
    args = (specs,)
    try:
        future = _pool.submit(_run, lambda ds: backend.check_connection(ds) + engine_extras(backend, images), args)
    except BaseException:
        _slots.release()
        raise
    deadline = settings.LAUNCHER_CHECK_DEADLINE_SECONDS
    try:
        return _merge(future.result(timeout=deadline), local)
    except FutureTimeout:
        return local + [CheckResult(name=DEADLINE, ok=False, detail=(
            f"no answer within {deadline} s: the engine is slow or unreachable (the test goes on in the "
            "background until the site's timeout)."))]


def _merge(engine: list[CheckResult], local: list[CheckResult]) -> list[CheckResult]:
    """The local checks after the backend's workspace check (the job user follows from it)."""
    at = next((i + 1 for i, r in reversed(list(enumerate(engine))) if r.name in ("workspace", "job user")),
              len(engine))
    return engine[:at] + local + engine[at:]


def _on_worker(site: Site, specs: list[DatasetSpec], images: list[tuple[str, str]],
               local: list[CheckResult]) -> list[CheckResult]:
    from jobs.tasks import site_check_task

    try:
        engine = engine_call(site_check_task, site=site_ref(site), datasets=[asdict(d) for d in specs],
                             images=[list(pair) for pair in images])
    except BackendError as exc:  # WorkerNoAnswer, or the broker is down: nothing could be checked
        return local + [CheckResult(name=DEADLINE, ok=False, detail=str(exc))]
    return _merge([CheckResult(**r) for r in engine], local)


def site_engine_checks(*, site: dict[str, Any], datasets: list[dict[str, Any]],
                       images: list[list[str]]) -> list[dict[str, Any]]:
    """Where the engine is (a worker, jobs.tasks.site_check_task): the backend's checks, the job
    user, the study images present, as plain dicts. `site`: engine_calls.site_ref()."""
    from jobs.services.site_checks import engine_extras, job_user_checks

    backend = backend_of(site)
    engine = backend.check_connection([DatasetSpec(**d) for d in datasets])
    results = _merge(engine, job_user_checks(site["backend"], backend)) + engine_extras(backend, images)
    return [asdict(r) for r in results]


def _run(check, args: tuple) -> list[CheckResult]:
    try:
        return check(*args)
    finally:
        _slots.release()
