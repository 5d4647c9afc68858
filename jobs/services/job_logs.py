"""The whole output of a job, kept when it ends (the job's saved tail stays the quick view).

At most LAUNCHER_LOGS_KEEP_BYTES per job: a longer output keeps its start and its end (half each,
cut at line ends) with one line marking the cut. Read with that byte cap too, so a job that printed
gigabytes never fills the launcher's memory. Pruned with the job's events (jobs.services.retention).
A running job's output is read from its engine through jobs.services.engine_calls (on a worker
with LAUNCHER_ENGINE_VIA_WORKER).
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpResponse

from backends.base import BackendError, Handle
from backends.logtail import cap_tail
from jobs.models import Job, JobLog

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
LONG_TAIL_LINES = 1_000_000  # for engines read through logs(tail=...): as many lines as the byte cap allows


def keep_bytes() -> int:
    return max(0, int(settings.LAUNCHER_LOGS_KEEP_BYTES))


def cut_mark(skipped: int) -> str:
    return f"[... {skipped} bytes cut: the start and the end of the output are kept ...]"


class HeadTail:
    """Keeps the first and the last `limit // 2` bytes of a byte stream, in bounded memory."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self.head) < self.half:
            room = self.half - len(self.head)
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.half:  # trimmed now and then, not on every chunk
                del self.tail[:len(self.tail) - self.half]

    def result(self) -> tuple[str, int]:
        """(text, bytes cut in the middle)."""
        if self.size <= self.limit:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace"), 0
        head, tail = bytes(self.head), bytes(self.tail[-self.half:])
        newline = head.rfind(b"\n")  # whole lines on both sides of the mark
        head = head[:newline + 1] if newline >= 0 else head
        newline = tail.find(b"\n")
        tail = tail[newline + 1:] if 0 <= newline < len(tail) - 1 else tail
        cut = self.size - len(head) - len(tail)
        text = head.decode("utf-8", "replace") + cut_mark(cut) + "\n" + tail.decode("utf-8", "replace")
        return text, cut


def read_output(backend, handle: Handle, limit: int) -> tuple[str, int, int]:
    """(text, bytes printed, bytes cut) of a workload's whole output, at most `limit` bytes kept."""
    keeper = HeadTail(limit)
    if backend.kind == "process":
        try:
            with open(backend._log_path(handle.ref), "rb") as f:
                size = f.seek(0, 2)
                f.seek(0)
                keeper.feed(f.read(keeper.half))
                if size > keeper.limit:  # skip the middle without reading it
                    f.seek(size - keeper.half)
                    keeper.size = size - keeper.half
                while chunk := f.read(CHUNK):
                    keeper.feed(chunk)
        except FileNotFoundError:
            return "", 0, 0
    elif backend.kind == "docker":
        from docker.errors import NotFound

        with backend.api.errors(f"read the output of {handle.ref}"):
            try:
                for chunk in backend.api.client().api.logs(handle.ref, stdout=True, stderr=True, stream=True,
                                                           follow=False):
                    keeper.feed(chunk)
            except NotFound:
                return "", 0, 0
    else:  # engines without a byte-bounded full read (Kubernetes): the longest tail logs() gives
        # (LAUNCHER_LOGS_TAIL_BYTES of the end), asking for a line count that bounds what it reads
        text = backend.logs(handle, tail=min(LONG_TAIL_LINES, max(200, limit // 40)))
        keeper.feed(text.encode())
    text, cut = keeper.result()
    return text, keeper.size, cut


def job_log_save(job_pk: int, backend, handle: Handle) -> JobLog | None:
    """Read and keep the whole output of a job's workload (before it is removed). None when
    LAUNCHER_LOGS_KEEP_BYTES is 0."""
    limit = keep_bytes()
    if not limit:
        return None
    text, size, cut = read_output(backend, handle, limit)
    if text.endswith("\n"):
        text = text[:-1]
    row, _ = JobLog.objects.update_or_create(job_id=job_pk, defaults={"text": text, "size": size, "cut": cut})
    return row


def job_output_text(job: Job) -> str:
    """What a full download serves: the kept output, else (still running, or ended before it was kept)
    the live output read with the same byte cap, else the saved tail."""
    row = JobLog.objects.filter(job=job).only("text").first()
    if row is not None:
        return row.text
    if not job.is_terminal and job.handle and keep_bytes():
        return _live(job, tail=None, limit=keep_bytes())
    return cap_tail(job.logs_tail)


def job_live_tail(job: Job, tail: int) -> str:
    """A running job's last `tail` lines, read from its engine now."""
    return _live(job, tail=tail, limit=0)


def _live(job: Job, *, tail: int | None, limit: int) -> str:
    from jobs.services.engine_calls import engine_call, site_ref
    from jobs.tasks import workload_output_task  # tasks import the services

    from jobs.services.runtime_facts import backend_error_recorded

    try:
        return engine_call(workload_output_task, site=site_ref(job.site), handle=dict(job.handle), tail=tail,
                           limit=limit)
    except BackendError as exc:  # a page or API read that ends no job: counted for /metrics, then answered
        backend_error_recorded(exc, operation="logs", site_pk=job.site_id)
        raise


def workload_output(*, site: dict, handle: dict, tail: int | None, limit: int) -> str:
    """Where the engine is (jobs.tasks.workload_output_task, or here): the last `tail` lines of a
    workload's output, or (tail None) its whole output kept to `limit` bytes (start and end)."""
    from jobs.services.engine_calls import backend_of

    backend, ref = backend_of(site), Handle(**handle)
    if tail is not None:
        return backend.logs(ref, tail=tail)
    return read_output(backend, ref, limit)[0]


def download_response(job: Job) -> HttpResponse:
    text = job_output_text(job)
    response = HttpResponse(text + ("\n" if text and not text.endswith("\n") else ""),
                            content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{job.site.name}-{job.job_id}.log"'
    response["Cache-Control"] = "private, no-store"
    return response
