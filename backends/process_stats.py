"""A process job's resource use (ProcessBackend.usage): the job runs in its own session, so its
process group is the job and every child it started."""

from __future__ import annotations

import os
from typing import Any


def process_group_usage(pgid: int) -> dict[str, Any] | None:
    """CPU seconds (user + system) and RSS summed over the live processes of group `pgid`, read
    from /proc/<pid>/stat and statm; None when none is left."""
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu, rss, found = 0, 0, False
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
            # After the command: state, ppid, pgrp, ..., utime (12th), stime (13th).
            if int(fields[2]) != pgid or fields[0] == "Z":
                continue
            with open(f"/proc/{name}/statm") as f:
                resident = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone between listdir and open
        cpu += int(fields[11]) + int(fields[12])
        rss += resident * page
        found = True
    if not found:
        return None
    return {"cpu_seconds": cpu / ticks, "memory_bytes": rss, "memory_limit_bytes": None}
