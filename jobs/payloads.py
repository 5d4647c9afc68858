"""The job payload: the one shape in which a job leaves the server, and its encoding for the wire.

`job_payload(job)` is what every reader of a job gets: the API's answers (list, launch, terminate;
`job_detail_payload` adds what was asked and the spec for GET /jobs/{id}/), the long poll
(jobs.api.wait), the websocket pushes (jobs.events) and the resume handshake and heartbeat catch-up
(jobs.services.resume). It is a plain function over the row, because it runs for every answer and
every push. The API serializers (jobs.api.serializers) declare the same fields for the schema and
delegate their output here; tests/api/test_payloads.py checks it against DRF's own representation
of those fields.

A job change is sent to browsers as a frame, `job_frame(job, seq)`: {"type": "job.update", "job":
<payload>, "seq": <its latest event id>}. On the channel layer it travels as `job_broadcast(job,
seq)`: the frame encoded once (`text`) plus the keys consumers and waiters route on (`id`,
`state`, `seq`), so no socket decodes or encodes it again. `dumps`/`loads` are the wire encoding
(channel layer and websockets); `updates_text` joins encoded frames into one `job.updates` frame.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Iterable

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.urls import get_script_prefix, reverse
from django.utils import timezone

JOB_FIELDS = (
    "id", "site", "job_id", "role", "study", "backend", "image", "handle", "state",
    "return_code", "exit_code", "reason", "detail", "created_at", "started_at",
    "finished_at", "progress", "usage", "url",
)
# Job.progress as every reader gets it (jobs.services.progress writes it): always these keys.
PROGRESS_FIELDS = ("round", "total_rounds", "aggregation_round", "aggregated_updates", "finished",
                   "last_aggregation_at", "updated_at")
# GET /jobs/{id}/: what was asked (credentials were never stored), the spec as launched (redacted;
# users only, not site tokens: it carries the site's configuration), and the last change.
JOB_DETAIL_FIELDS = (*JOB_FIELDS, "job_meta", "job_args", "set_options", "spec", "updated_at")
JOB_SUBMITTER_DETAIL_FIELDS = tuple(name for name in JOB_DETAIL_FIELDS if name != "spec")

JOB_DETAIL_ROUTE = "api:job-detail"  # the API router's name for /api/v1/jobs/{id}/ (jobs.api.urls)
_URL_PK = "9" * 18  # a placeholder the route accepts, found again in the reversed path


def dumps(message) -> str:
    """The wire encoding of a message (channel layer `text`, websocket frames)."""
    return json.dumps(message)


def loads(text: str | bytes):
    return json.loads(text)


def job_url(pk: int) -> str:
    """The job's API URL, from the site root (the same in every process, request or not)."""
    head, tail = _url_parts()
    return f"{head}{pk}{tail}"


@functools.cache
def _url_parts() -> tuple[str, str]:
    # Reversed once, then split around the placeholder: a job's URL is then one string join. Without
    # the script prefix a request may have set: the URL must not depend on the process sending it.
    path = reverse(JOB_DETAIL_ROUTE, kwargs={"pk": _URL_PK})
    path = "/" + path[len(get_script_prefix()):]
    head, found, tail = path.partition(_URL_PK)
    if not found:
        raise LookupError(f"{JOB_DETAIL_ROUTE!r} does not reverse to a path holding its pk: {path}")
    return head, tail


@receiver(setting_changed)
def _forget_url(setting, **kwargs) -> None:
    if setting == "ROOT_URLCONF":
        _url_parts.cache_clear()


def _when(value, tz):
    """A datetime as DRF's DateTimeField shows it: ISO 8601 in `tz`, UTC as `Z`."""
    if not value or isinstance(value, str):
        return value or None
    if tz is not None:
        value = value.astimezone(tz) if timezone.is_aware(value) else timezone.make_aware(value, tz)
    elif timezone.is_aware(value):
        value = timezone.make_naive(value, datetime.UTC)
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _int(value):
    return None if value is None else int(value)


def _tz():
    # The site's time zone (TIME_ZONE), not one a request may have activated: a payload is the same
    # whichever process builds it (nothing activates one; DRF would also show times in it). And
    # cheap: the active zone is a context-local lookup, half the cost of a payload.
    return timezone.get_default_timezone() if settings.USE_TZ else None


def _progress(value):
    # The stored dict's own values (jobs.services.progress checks them before storing), under
    # exactly PROGRESS_FIELDS, or None before the output shows any progress.
    return {name: value.get(name) for name in PROGRESS_FIELDS} if isinstance(value, dict) else None


def _usage(value):
    # The latest resource sample (jobs.services.usage) under exactly USAGE_FIELDS; None before any.
    from jobs.services.usage import USAGE_FIELDS

    return {name: value.get(name) for name in USAGE_FIELDS} if isinstance(value, dict) else None


def job_payload(job, *, tz=None) -> dict:
    """The job as every reader gets it (JOB_FIELDS). `job.site` should be loaded with it
    (select_related), as for any list of jobs."""
    tz = tz or _tz()
    site = job.site
    return {
        "id": job.pk,
        "site": site.name if site is not None else None,
        "job_id": job.job_id,
        "role": str(job.role),  # str(): a JobRole/JobState member assigned in memory is sent as its value
        "study": job.study,
        "backend": str(job.backend),
        "image": job.image,
        "handle": job.handle,
        "state": str(job.state),
        "return_code": _int(job.return_code),
        "exit_code": _int(job.exit_code),
        "reason": job.reason,
        "detail": job.detail,
        "created_at": _when(job.created_at, tz),
        "started_at": _when(job.started_at, tz),
        "finished_at": _when(job.finished_at, tz),
        "progress": _progress(job.progress),
        "usage": _usage(job.usage),
        "url": job_url(job.pk),
    }


def job_detail_payload(job, *, spec: bool = True) -> dict:
    """One job with what was asked and, when `spec`, the spec as launched (JOB_DETAIL_FIELDS;
    without `spec`, JOB_SUBMITTER_DETAIL_FIELDS: what a site token sees)."""
    tz = _tz()
    payload = job_payload(job, tz=tz)
    payload["job_meta"] = job.job_meta
    payload["job_args"] = job.job_args
    payload["set_options"] = job.set_options
    if spec:
        payload["spec"] = job.spec
    payload["updated_at"] = _when(job.updated_at, tz)
    return payload


def job_frame(job, seq: int | None) -> dict:
    """The browser's message for a job change: the payload plus the sequence number."""
    return {"type": "job.update", "job": job_payload(job), "seq": seq}


def job_broadcast(job, seq: int | None) -> dict:
    """The channel-layer message for a job change: the frame encoded once (`text`, sent on as it
    is) and the keys receivers route on."""
    return {"type": "job.update", "id": job.pk, "state": str(job.state), "seq": seq,
            "text": dumps(job_frame(job, seq))}


def broadcast_frame(message: dict) -> dict:
    """The frame a job_broadcast message carries, decoded (for a receiver that needs the payload)."""
    return loads(message["text"])


def updates_text(texts: Iterable[str]) -> str:
    """Encoded job frames joined into one `job.updates` frame, without decoding them."""
    return '{"type": "job.updates", "updates": [' + ", ".join(texts) + "]}"
