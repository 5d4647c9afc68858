"""site_probe: the "test launch" of the site settings page.

Runs a harmless job through the site's real backend with one study's datasets, and reports which
/data/<study>/<dataset> paths the job saw and whether it could write to each. The job is recorded
like any other (job id "probe-..."), so it shows in the site's history; its state changes go
through job_observe like every other job.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from dataclasses import dataclass, field

from django.db import transaction

from backends import workload_name
from backends.base import BackendError, Handle, JobRequest, JobState
from backends.nvflare import JOB_MODULES  # the command is replaced below; this only passes prepare
from jobs import events
from jobs.models import Job, JobEvent, Site
from jobs.services.launching import job_apply_observation
from jobs.services.lifecycle import job_observe
from jobs.services.sites import site_backend, study_runtime

PROBE_TIMEOUT = 60.0  # seconds the page waits for the probe to finish; the job is aborted after it
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
    def ok(self) -> bool:
        modes_right = not self.modes_enforced or all(m.expected in ("", m.mode) for m in self.mounts)
        return self.job.state == JobState.SUCCEEDED and not self.missing and modes_right


def site_probe(*, site: Site, study: str, image: str = "", requested_by=None, timeout: float = PROBE_TIMEOUT) -> ProbeResult:
    """Launch the probe, wait (at most `timeout` seconds) for it to end, and report what it saw.

    Raises InvalidJobSpec (nothing recorded) when the site cannot launch it, e.g. no image.
    A backend failure after the job is recorded ends the job as launch_failed, as for any job.
    """
    backend = site_backend(site)
    runtime = study_runtime(site, study)
    job_id = f"probe-{uuid.uuid4().hex[:12]}"
    mode = {"docker": "docker", "kubernetes": "k8s", "process": "process"}[site.backend]
    job_meta = {"study": study} if study else {}
    if image and site.backend != "process":
        job_meta["launcher_spec"] = {site.name: {mode: {"image": image}}}
    request = JobRequest(site=site.name, job_pk="0", job_id=job_id, job_meta=job_meta,
                         job_args={"exe_module": ["-m", JOB_MODULES["client"]], "job_id": ["-n", job_id]}, study=runtime)
    backend.prepare(request)  # InvalidJobSpec before anything is recorded

    with transaction.atomic():
        job = Job.objects.create(site=site, job_id=job_id, study=study, backend=site.backend, job_meta=job_meta,
                                 workload=workload_name(site.backend, site.name, job_id), submitted_by=requested_by)
        event = JobEvent.objects.create(job=job, from_state="", to_state=JobState.QUEUED, source="admin",
                                        message="test launch from the site settings page")
        job_pk, seq = job.pk, event.pk
        transaction.on_commit(lambda: events.publish_job(job_pk, seq=seq))

    spec = backend.prepare(dataclasses.replace(request, job_pk=str(job.pk)))
    command = ("sh", "-c", SHELL_PROBE) if site.backend != "process" else (spec.command[0], "-c", PYTHON_PROBE)
    options = dict(spec.options)
    if "command" in options:
        options["command"] = list(command)
    spec = dataclasses.replace(spec, command=command, options=options)
    try:
        handle = backend.launch(spec)
    except BackendError as exc:
        job, _ = job_observe(job_pk=job.pk, state=JobState.LAUNCH_FAILED, source="admin", message=str(exc),
                             reason="LaunchError")
        return ProbeResult(job=job, output=str(exc))
    job, _ = job_observe(job_pk=job.pk, state=JobState.STARTING, source="admin", handle=handle.as_dict(),
                         spec=spec.redacted(), image=spec.image, message=f"{backend.kind} probe {handle.ref} created")
    job = _wait_for_end(job, backend, handle, timeout)
    return _result(job, runtime)


def _wait_for_end(job: Job, backend, handle: Handle, timeout: float) -> Job:
    # A one-shot, bounded wait: the probe ends within a second or two on a healthy site. The site's
    # watcher may record the end first; then the job row already says so.
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        job.refresh_from_db()
        if job.is_terminal:
            return job
        observation = backend.inspect(handle)
        if observation.state.is_terminal or observation.state is JobState.LOST:
            return job_apply_observation(observation, source="admin", job=job) or job
        if time.monotonic() > deadline:
            observation = backend.terminate(handle)
            return job_apply_observation(observation, source="admin", job=job, terminated=True) or job
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _result(job: Job, runtime) -> ProbeResult:
    expected = {}
    for ds in runtime.datasets if runtime else ():
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
    missing = [ds.name for ds in (runtime.datasets if runtime else ()) if ds.name not in seen]
    return ProbeResult(job=job, mounts=mounts, output=job.logs_tail or job.detail, missing=missing,
                       modes_enforced=job.backend != "process")
