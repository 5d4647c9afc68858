"""site_probe: the "test launch" of the site settings page.

An ordinary submit: a harmless job through the site's real backend with one study's datasets, with
the launcher's declared command override (JobRequest.command) in place of NVFlare's command. The
launch task launches it like any other job, the watcher records its end, and its page (the job
page) watches the row like any other job's. `probe_report` reads from the saved logs tail which
/data/<study>/<dataset> paths the job saw and whether it could write to each. The job is recorded
like any other (job id "probe-..."), so it shows in the site's history.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import transaction

from backends.base import DatasetSpec, JobState
from backends.nvflare import JOB_MODULES  # the command is replaced; NVFlare's args still pass prepare
from jobs.models import Job, Site
from jobs.services.sites import site_backend, study_runtime
from jobs.services.submission import job_submit

PROBE_TIMEOUT = 60.0  # seconds a probe may run; it is terminated (aborted) after it
MARK = "PROBE-MOUNT"

# Containers: list every /data/<study>/<dataset> and try to create (then remove) a file in each.
SHELL_PROBE = (
    'for d in /data/*/*; do [ -d "$d" ] || continue; f="$d/.flare-launcher-probe-$$"; '
    'if touch "$f" 2>/dev/null; then rm -f "$f"; m=rw; else m=ro; fi; '
    f'echo "{MARK} $d $m"; done; echo PROBE-DONE'
)
# Local processes get no mounts: each dataset arrives as an NVFLARE_DATASET_<STUDY>_<NAME> path.
PYTHON_PROBE = (
    "import os\n"
    "for k, v in sorted(os.environ.items()):\n"
    "    if k.startswith('NVFLARE_DATASET_'):\n"
    f"        print('{MARK}', v, 'rw' if os.access(v, os.W_OK) else 'ro', k)\n"
    "print('PROBE-DONE')\n"
)


@dataclass
class ProbeMount:
    path: str
    mode: str  # what the job saw: "rw" when it could write there
    expected: str = ""  # the dataset's configured mode
    dataset: str = ""


@dataclass
class ProbeResult:
    job: Job
    mounts: list[ProbeMount] = field(default_factory=list)
    output: str = ""
    missing: list[str] = field(default_factory=list)  # configured datasets the job did not see
    modes_enforced: bool = True  # False for local processes: "ro" is not enforced on the host

    @property
    def done(self) -> bool:
        """Ended, and its output saved (a watcher saves the tail just after it records the exit)."""
        return self.job.is_terminal and (bool(self.job.logs_tail) or self.job.state != JobState.SUCCEEDED)

    @property
    def ok(self) -> bool:
        modes_right = not self.modes_enforced or all(m.expected in ("", m.mode) for m in self.mounts)
        return self.job.state == JobState.SUCCEEDED and not self.missing and modes_right


def site_probe(*, site: Site, study: str, image: str = "", requested_by=None,
               on_created: Callable[[Job], None] | None = None) -> Job:
    """Submit the probe and return its job (queued; the launch task launches it after commit).

    Raises InvalidJobSpec (nothing recorded) when the site cannot launch it, e.g. no image.
    A backend failure at launch ends the job as launch_failed, as for any job.
    """
    job_id = f"probe-{uuid.uuid4().hex[:12]}"
    mode = {"docker": "docker", "kubernetes": "k8s", "process": "process"}[site.backend]
    job_meta = {"study": study} if study else {}
    if image and site.backend != "process":
        job_meta["launcher_spec"] = {site.name: {mode: {"image": image}}}
    job_args = {"exe_module": ["-m", JOB_MODULES["client"]], "job_id": ["-n", job_id]}
    if site.backend == "process":
        # argv[0] is not implied: the site's python, as NVFlare's command would run it.
        command = (site_backend(site).config.default_python_path, "-c", PYTHON_PROBE)
    else:
        command = ("sh", "-c", SHELL_PROBE)
    job, _ = job_submit(site=site, job_id=job_id, job_meta=job_meta, job_args=job_args, submitted_by=requested_by,
                        source="admin", on_created=on_created, command=command,
                        message="test launch from the site settings page")
    transaction.on_commit(lambda: _limit(job.pk))
    return job


def _limit(job_pk: int) -> None:
    from jobs.tasks import job_terminate_task  # tasks import the services

    # A probe ends within a second or two on a healthy site; one that hangs is aborted.
    job_terminate_task.apply_async(args=[job_pk], countdown=PROBE_TIMEOUT)


def is_probe(job: Job) -> bool:
    """Only the launcher's probe runs a declared command override (a submitter cannot)."""
    return bool(job.request and job.request.get("command"))


def probe_report(job: Job) -> ProbeResult | None:
    """What a probe job saw, from its saved logs tail; None for any other job."""
    if not is_probe(job):
        return None
    if job.spec and job.spec.get("datasets") is not None:  # what it was launched with
        datasets = [DatasetSpec(study=ds["study"], name=ds["name"], source=ds["source"], mode=ds["mode"])
                    for ds in job.spec["datasets"]]
    else:
        runtime = study_runtime(job.site, job.study, check_sources=False)  # a page: what was asked, not checked
        datasets = list(runtime.datasets) if runtime else []
    expected = {}
    for ds in datasets:
        expected[ds.mount_path] = (ds.mode, ds.name)
        expected[ds.source] = (ds.mode, ds.name)
        expected[os.path.realpath(ds.source)] = (ds.mode, ds.name)
    mounts = []
    for line in (job.logs_tail or "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == MARK:
            mode, name = expected.get(parts[1], ("", ""))
            mounts.append(ProbeMount(path=parts[1], mode=parts[2], expected=mode, dataset=name))
    seen = {m.dataset for m in mounts}
    missing = [ds.name for ds in datasets if ds.name not in seen]
    return ProbeResult(job=job, mounts=mounts, output=job.logs_tail or job.detail, missing=missing,
                       modes_enforced=job.backend != "process")
