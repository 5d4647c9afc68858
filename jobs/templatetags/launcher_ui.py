"""Template helpers for the dashboard: return codes in words, durations, form fields, the site list."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone

from django import template
from django.utils import timezone
from django.utils.html import format_html

from jobs import selectors

register = template.Library()

# NVFlare's JobReturnCode, in words.
RETURN_CODES = {
    0: "success",
    1: "execution error: the job's code failed",
    9: "aborted: terminated or its workload vanished",
    101: "exception: the job raised an unexpected error",
    102: "unsafe component: the job used a component the site does not allow",
    103: "config error: the job's configuration is invalid",
    104: "infrastructure error: the launcher or runtime failed",
    127: "unknown: no return code was recorded",
}


@register.filter
def return_code_text(code) -> str:
    if code is None or code == "":
        return ""
    return RETURN_CODES.get(int(code), "unknown return code")


@register.filter
def utc(value: datetime | None) -> str:
    if not value:
        return ""
    return value.astimezone(dt_timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@register.filter
def iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


@register.filter
def when(value: datetime | None, fmt: str = "local"):
    """A <time> in UTC text; launcher.js shows it in the browser's zone (`fmt`: "local", "ago" or
    "both"), with UTC on hover."""
    if not value:
        return "—"
    text = utc(value)
    return format_html('<time datetime="{}" title="{} UTC" data-format="{}">{} UTC</time>', iso(value), text, fmt, text)


def format_seconds(seconds: float) -> str:
    if 0 < seconds < 1:
        return "<1s"  # never "0s" for a run that took a moment
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


@register.filter
def run_duration(job) -> str:
    if not job.started_at:
        return ""
    end = job.finished_at or timezone.now()
    return format_seconds((end - job.started_at).total_seconds())


@register.simple_tag(takes_context=True)
def visible_sites(context):
    request = context.get("request")
    if request is None or not request.user.is_authenticated:
        return []
    return list(selectors.sites_visible_to(request.user).only("name"))


@register.inclusion_tag("jobs/includes/field.html")
def field(bound_field, css: str = ""):
    return {"f": bound_field, "css": css}
