"""The confirmation step of risky dashboard actions (revoke a token, delete a site, study or
dataset, rename a site or switch its backend).

The page says what will happen; its button posts `confirm=yes`. The server refuses such a POST
without it (400, nothing done), so neither a stale form nor a crafted request skips the step. It is
a plain server-rendered page: it works without JavaScript.
"""

from __future__ import annotations

from jobs.views.common import render_page

CONFIRM_FIELD = "confirm"
NOT_CONFIRMED = "Nothing was done: this action needs its confirmation. Read what it does below, then confirm."


def confirmed(request) -> bool:
    return request.method == "POST" and request.POST.get(CONFIRM_FIELD) == "yes"


def confirm_page(request, *, title: str, consequences: list[str], button: str, cancel: str, site=None,
                 section: str = "", action: str = "", carry: list[tuple[str, str]] | None = None,
                 refused: bool = False):
    """The confirmation page; `carry` re-posts a form's fields with the confirmation (settings).
    `refused`: this request was the action without its confirmation (400)."""
    return render_page(request, "jobs/confirm.html", {
        "title": title, "consequences": consequences, "button": button, "cancel": cancel, "action": action,
        "carry": carry or [], "refused": refused and NOT_CONFIRMED,
    }, site=site, section=section, status=400 if refused else 200)


def carried_fields(request) -> list[tuple[str, str]]:
    """The submitted form's fields, to post again with the confirmation."""
    return [(name, value) for name, values in request.POST.lists()
            if name not in ("csrfmiddlewaretoken", CONFIRM_FIELD) for value in values]
