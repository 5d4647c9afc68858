"""One running container's resource use, for the dashboard's usage line (jobs.services.usage).

Measured here (bench/resource_sampling.py): the SDK's `stats(stream=False)` takes ~2 s a call (it
waits for the daemon's second sample); `one-shot=true` (API >= 1.41) still waits up to 1 s for the
daemon's next collection tick. So with a local daemon the container's cgroup files are read instead
(well under a millisecond), the API only when they cannot be found (a remote daemon). Either way one
reading has no CPU rate: this returns the cumulative CPU time and the caller computes cores from two
of its own samples.
"""

from __future__ import annotations

import os
from typing import Any

from docker.errors import InvalidVersion, NotFound

from backends.docker.client import DockerApi

CGROUP_ROOT = "/sys/fs/cgroup"
_ids: dict[str, str] = {}  # container name -> full id, for the cgroup path (bounded below)


def container_usage(api: DockerApi, ref: str, *, cgroups: bool = True) -> dict[str, Any] | None:
    """{"cpu_seconds", "memory_bytes", "memory_limit_bytes"} of container `ref`; None when it is gone.
    `cgroups`: try the cgroup files first (only meaningful for a daemon on this host)."""
    client = api.client()
    local = not api.config.docker_host or api.config.docker_host.startswith("unix://")
    if cgroups and local:
        container_id = _ids.get(ref)
        if container_id is None:
            with api.errors(f"inspect {ref}"):
                try:
                    container_id = client.api.inspect_container(ref)["Id"]
                except NotFound:
                    return None
            if len(_ids) > 1000:
                _ids.clear()
            _ids[ref] = container_id
        usage = cgroup_usage(container_id)
        if usage is not None:
            return usage
        _ids.pop(ref, None)  # gone, or a new container under the name: ask the daemon
    with api.errors(f"read stats of {ref}"):
        try:
            try:
                raw = client.api.stats(ref, stream=False, one_shot=True)
            except InvalidVersion:  # a daemon older than API 1.41: the slow two-sample read
                raw = client.api.stats(ref, stream=False)
        except NotFound:
            return None
    return usage_from_stats(raw)


def usage_from_stats(raw: dict[str, Any]) -> dict[str, Any] | None:
    """Map one stats document (pure: tested against literal dicts). A stopped container reports
    no cpu_stats usage: None."""
    cpu = ((raw.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
    memory = raw.get("memory_stats") or {}
    if cpu is None and not memory:
        return None
    used = memory.get("usage")
    if used is not None:
        # As `docker stats` shows it: the page cache the kernel can drop is not the job's memory.
        extra = memory.get("stats") or {}
        used -= extra.get("inactive_file", extra.get("total_inactive_file", 0)) or 0
    limit = memory.get("limit")
    return {
        "cpu_seconds": cpu / 1e9 if cpu is not None else None,
        "memory_bytes": max(int(used), 0) if used is not None else None,
        # A container without a limit reports the host's memory: shown as no limit.
        "memory_limit_bytes": int(limit) if limit and limit < (1 << 62) and not _host_total(limit) else None,
    }


def _host_total(limit: int) -> bool:
    try:
        with open("/proc/meminfo") as f:
            total_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        return False
    return abs(limit - total_kib * 1024) < 1024 * 1024


def cgroup_usage(container_id: str, root: str = CGROUP_ROOT) -> dict[str, Any] | None:
    """The container's own cgroup files (v2, or v1 with the cgroupfs or systemd driver); None when
    they are not on this host."""
    for v2 in (f"{root}/docker/{container_id}", f"{root}/system.slice/docker-{container_id}.scope"):
        if os.path.exists(f"{v2}/memory.current"):
            stat = _keyed(f"{v2}/cpu.stat")
            memory = _keyed(f"{v2}/memory.stat")
            limit = _read(f"{v2}/memory.max")
            used = int(_read(f"{v2}/memory.current") or 0) - memory.get("inactive_file", 0)
            return {"cpu_seconds": stat.get("usage_usec", 0) / 1e6, "memory_bytes": max(used, 0),
                    "memory_limit_bytes": int(limit) if limit and limit.isdigit() else None}
    for group in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        cpu, mem = f"{root}/cpuacct/{group}", f"{root}/memory/{group}"
        if os.path.exists(f"{cpu}/cpuacct.usage") and os.path.exists(f"{mem}/memory.usage_in_bytes"):
            memory = _keyed(f"{mem}/memory.stat")
            used = int(_read(f"{mem}/memory.usage_in_bytes") or 0) - memory.get("total_inactive_file", 0)
            limit = int(_read(f"{mem}/memory.limit_in_bytes") or 0)
            return {"cpu_seconds": int(_read(f"{cpu}/cpuacct.usage") or 0) / 1e9, "memory_bytes": max(used, 0),
                    # No limit is a huge number (page-rounded LONG_MAX) in v1.
                    "memory_limit_bytes": limit if 0 < limit < (1 << 62) else None}
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _keyed(path: str) -> dict[str, int]:
    values = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            values[key] = int(value)
    return values
