"""Loaded as `sitecustomize` by the launcher processes of `bench/launch_whole_path.py --phases` (this
directory on their PYTHONPATH): appends "<key> <phase> <wall time>" lines to $BENCH_PHASES when a
launch task is published and starts, and when each step of its launch (jobs.services.launching)
returns. Bench-only; nothing in the launcher imports it."""

import os
import threading
import time

PATH = os.environ.get("BENCH_PHASES")
_local = threading.local()


def _note(key, phase):
    with open(PATH, "a") as f:  # one O_APPEND write per line: lines from several processes never mix
        f.write(f"{key} {phase} {time.time():.6f}\n")


def _noting(function, phase):
    def wrapper(*args, **kw):
        result = function(*args, **kw)
        if getattr(_local, "pk", None) is not None:  # inside a launch task only (submit also prepares)
            _note(f"pk:{_local.pk}", phase)
        return result
    return wrapper


def _wrap():
    from backends.docker import DockerBackend
    from backends.kubernetes import KubernetesBackend
    from backends.process import ProcessBackend
    from jobs.services import launching, sealing

    sealing.credentials_unseal = _noting(sealing.credentials_unseal, "unsealed")
    launching.site_backend = _noting(launching.site_backend, "backend")
    launching.request_to_launch = _noting(launching.request_to_launch, "request")
    for cls in (ProcessBackend, DockerBackend, KubernetesBackend):
        cls.prepare, cls.launch = _noting(cls.prepare, "prepared"), _noting(cls.launch, "launched")


if PATH:
    from celery import signals

    _wrapped = []

    @signals.after_task_publish.connect(weak=False)
    def _published(sender=None, body=None, **kw):
        if sender and sender.endswith("job_launch_task"):
            _note(f"pk:{body[0][0]}", "published")

    @signals.task_prerun.connect(weak=False)
    def _prerun(task=None, args=None, **kw):
        if not _wrapped:
            _wrap()
            _wrapped.append(True)
        if task.name.endswith("job_launch_task") and args:
            _local.pk = args[0]
            _note(f"pk:{args[0]}", "task")

    @signals.task_postrun.connect(weak=False)
    def _postrun(**kw):
        _local.pk = None
