"""A site's "test connection", bounded: it never holds a request thread past a deadline.

The backend's checks run on a small per-process pool (CHECK_SLOTS threads). The caller waits at most
LAUNCHER_CHECK_DEADLINE_SECONDS, then answers with a "no answer yet" result while the check finishes
in the background (each backend call is itself bounded by the site's timeout, at most 120 s). When
every slot is taken, further calls are answered at once with a "busy" result: a slow docker_host
cannot take every request thread of the process.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.conf import settings

from backends.base import CheckResult, DatasetSpec
from jobs.models import Dataset, Site
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
    from jobs.services.site_checks import engine_extras, local_checks, study_images

    backend = site_backend(site)
    local = local_checks(site, backend)  # in this thread: it reads the site's studies
    images = study_images(site)
    # Read in this thread: the pool threads never touch the database.
    args = ([DatasetSpec(**d) for d in datasets] if datasets is not None else [
        DatasetSpec(study=d.study.name, name=d.name, source=d.source, mode=d.mode)
        for d in Dataset.objects.filter(study__site=site).select_related("study")],)
    if not _slots.acquire(blocking=False):
        return local + [CheckResult(name=BUSY, ok=False, detail=(
            f"{CHECK_SLOTS} connection tests are already running in this process (a slow or unreachable "
            "engine?); try again in a few seconds."))]
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
    at = next((i + 1 for i, r in enumerate(engine) if r.name == "workspace"), len(engine))
    return engine[:at] + local + engine[at:]


def _run(check, args: tuple) -> list[CheckResult]:
    try:
        return check(*args)
    finally:
        _slots.release()
