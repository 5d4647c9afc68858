"""Resource use of running jobs: CPU cores and memory sampled from the backend (at most every
LAUNCHER_RESOURCE_SAMPLE_SECONDS, 0 = off) by the watcher's log follower of each running job, and
what the job requested (GPUs, CPU and memory limits) read from its spec as launched.

Stored on the job through the one door (lifecycle.job_note(usage=...)) and pushed as a job.update.
A backend without a usage() method (Kubernetes: no metrics API) gets the requests and limits only,
marked "usage not available".
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.utils import timezone

from backends.base import BackendError, Handle

log = logging.getLogger(__name__)
USAGE_FIELDS = ("available", "cpu_cores", "memory_bytes", "memory_limit_bytes", "cpu_limit_cores",
                "gpus_requested", "sampled_at", "cost_ms", "note")
NOT_AVAILABLE = "usage not available (no metrics API for this backend); requests and limits from the spec"


def sample_seconds() -> float:
    return float(getattr(settings, "LAUNCHER_RESOURCE_SAMPLE_SECONDS", 10) or 0)


def requested(spec: dict | None) -> dict[str, Any]:
    """GPUs, CPU and memory limit the job asked for, from its spec as launched (Docker run kwargs
    or the Kubernetes manifest's container resources)."""
    options = (spec or {}).get("options") or {}
    gpus = cpus = memory = None
    for request in options.get("device_requests") or ():
        if isinstance(request, dict) and ["gpu"] in (request.get("Capabilities") or []):
            gpus = (gpus or 0) + int(request.get("Count") or 0)
    if options.get("nano_cpus"):
        cpus = options["nano_cpus"] / 1e9
    if isinstance(options.get("mem_limit"), int):
        memory = options["mem_limit"]
    for resources in _resources_blocks(options):
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        gpu = limits.get("nvidia.com/gpu") or requests.get("nvidia.com/gpu")
        if gpu is not None:
            gpus = (gpus or 0) + int(gpu)
        cpus = cpus if cpus is not None else _cores(limits.get("cpu") or requests.get("cpu"))
        memory = memory if memory is not None else _bytes(limits.get("memory") or requests.get("memory"))
    return {"gpus_requested": gpus, "cpu_limit_cores": cpus, "memory_limit_bytes": memory}


def _resources_blocks(value: Any, depth: int = 0):
    # The manifest's containers[].resources, wherever the backend put the manifest in its options.
    if depth > 8:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "resources" and isinstance(item, dict) and ("limits" in item or "requests" in item):
                yield item
            else:
                yield from _resources_blocks(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _resources_blocks(item, depth + 1)


def _cores(value: Any) -> float | None:
    try:
        text = str(value)
        return int(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except (TypeError, ValueError):
        return None


_UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def _bytes(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * _UNITS[unit])
            except ValueError:
                return None
    try:
        return int(float(text))
    except ValueError:
        return None


class UsageFeed:
    """One running job's sampler, ticked by its log follower: samples when the interval has passed,
    turns two cumulative CPU readings into cores, and records the sample through job_note."""

    def __init__(self, backend, job_pk: int, handle: Handle, spec: dict | None):
        self.backend, self.job_pk, self.handle = backend, job_pk, handle
        self.interval = sample_seconds()
        self.asked = requested(spec)
        self.next_at = 0.0
        self.previous: tuple[float, float] | None = None  # (monotonic time, cumulative CPU seconds)

    def tick(self) -> dict[str, Any] | None:
        """Sample and record when due; returns the recorded usage (None when not due or off)."""
        now = time.monotonic()
        if self.interval <= 0 or now < self.next_at:
            return None
        self.next_at = now + self.interval
        usage = self.sample()
        if usage is not None:
            from jobs.services.lifecycle import job_note

            try:
                job_note(self.job_pk, source="watcher", usage=usage)
            except Exception:  # a missed sample is harmless; the next one comes in `interval`
                log.exception("could not record the usage of job %s", self.job_pk)
        return usage

    def sample(self) -> dict[str, Any] | None:
        reader = getattr(self.backend, "usage", None)
        base = {name: None for name in USAGE_FIELDS} | self.asked
        base["sampled_at"] = timezone.now().isoformat()
        if reader is None:
            return base | {"available": False, "note": NOT_AVAILABLE}
        started = time.perf_counter()
        try:
            raw = reader(self.handle)
        except BackendError as exc:
            log.info("usage of job %s: %s", self.job_pk, exc)
            return None
        cost_ms = round((time.perf_counter() - started) * 1000, 2)
        if raw is None:
            return None
        now, cpu = time.monotonic(), raw.get("cpu_seconds")
        cores = None
        if cpu is not None and self.previous is not None and now > self.previous[0]:
            cores = round(max(cpu - self.previous[1], 0.0) / (now - self.previous[0]), 3)
        self.previous = (now, cpu) if cpu is not None else None
        return base | {
            "available": True, "cpu_cores": cores, "memory_bytes": raw.get("memory_bytes"),
            "memory_limit_bytes": self.asked["memory_limit_bytes"] or raw.get("memory_limit_bytes"),
            "cost_ms": cost_ms, "note": "" if cores is not None else "CPU shown from the second sample",
        }


def usage_text(usage: dict | None) -> str:
    """"CPU 1.2 cores · memory 312 MiB of 2 GiB · GPUs requested: 1" (static/js/job.js says the same)."""
    if not usage:
        return ""
    parts = []
    if usage.get("available"):
        if usage.get("cpu_cores") is not None:
            parts.append(f"CPU {round(usage['cpu_cores'], 2):g} cores")
        if usage.get("memory_bytes") is not None:
            memory = f"memory {_size(usage['memory_bytes'])}"
            if usage.get("memory_limit_bytes"):
                memory += f" of {_size(usage['memory_limit_bytes'])}"
            parts.append(memory)
    else:
        parts.append("usage not available")
        if usage.get("cpu_limit_cores"):
            parts.append(f"CPU limit {usage['cpu_limit_cores']:g} cores")
        if usage.get("memory_limit_bytes"):
            parts.append(f"memory limit {_size(usage['memory_limit_bytes'])}")
    parts.append(f"GPUs requested: {usage.get('gpus_requested') or 0}")
    return " · ".join(parts)


def _size(value: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            number = value / size
            return f"{number:.1f} {unit}".replace(".0 ", " ")
    return f"{value} B"
