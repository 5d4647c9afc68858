"""All of a form's errors in one answer.

Django already runs every field check of a form; what made the dashboard show one error per submit
was everything after it: the service only ran once the form was clean, and a few service checks
stop at their first problem (a backend settings block, the data roots). Here:

- `apply_form` runs the service call even when some fields failed, on what did parse, inside a
  transaction that is rolled back, so the service's errors on the other fields come in the same
  answer (and `commit=False` does the same for a form whose fields are all fine: a dry run before a
  confirmation step);
- `block_errors` / `root_errors` call the same service checks repeatedly, dropping what failed, so
  the messages are the API's own, each problem once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db import transaction

from backends import config_class
from backends.base import InvalidJobSpec


class Incomplete(Exception):
    """The form lacks what the service call needs (e.g. no valid backend): no dry run."""


class _DryRun(Exception):
    pass


class SummaryMixin:
    """`summary`: (field id, label, message) in the order of the fields, form-wide messages first;
    what templates/includes/form_errors.html lists at the top of the form."""

    def summary(self) -> list[tuple[str, str, str]]:
        items = [("", "", str(message)) for message in self.non_field_errors()]
        for bound in self:
            for message in bound.errors:
                items.append((bound.id_for_label or bound.auto_id, str(bound.label), str(message)))
        return items

    def values(self) -> dict[str, Any]:
        """cleaned_data, with the initial value (or blank) for each field that failed: what a dry
        run of the service gets, so its messages on the other fields are the real ones."""
        values = dict(getattr(self, "cleaned_data", {}))
        for name, field in self.fields.items():
            if name in values:
                continue
            initial = self.initial.get(name, field.initial)
            if initial is None:  # JSONField says what "nothing" is; text is ""
                text = isinstance(field, forms.CharField)
                initial = field.empty if hasattr(field, "empty") else ("" if text else None)
            values[name] = initial
        return values

    @property
    def summary_id(self) -> str:
        name = type(self).__name__.removesuffix("Form").lower()  # unique when two forms share a page
        return f"{self.prefix or name}-errors"


def target_field(form: forms.Form, key: str, field_map: Mapping[str, str] | None) -> str | None:
    """The form field a service error key belongs on: an exact name, a mapped name, the longest
    mapped prefix of a dotted key, else None (the form as a whole)."""
    field_map = field_map or {}
    if key in form.fields:
        return key
    if key in field_map:
        return field_map[key] if field_map[key] in form.fields else None
    prefixes = [p for p in field_map if p.endswith(".") and key.startswith(p)]
    target = field_map[max(prefixes, key=len)] if prefixes else None
    return target if target in form.fields else None


def apply_form(form: forms.Form, action: Callable[[], Any], *, field_map: Mapping[str, str] | None = None,
               commit: bool = True) -> Any:
    """Validate `form` and run `action` (the service call and its audit entry) in one transaction.

    Returns what `action` returned, or None when the form has errors (all of them, on their fields).
    When fields failed, or `commit` is False, `action` still runs on the values that did parse and
    is rolled back: only its errors on fields that have none yet are added. With `commit=False` a
    clean form returns True (nothing was written)."""
    valid = form.is_valid()
    already = set(form.errors)
    try:
        with transaction.atomic():
            result = action()
            if not valid or not commit:
                raise _DryRun
    except (_DryRun, Incomplete):
        return True if valid and not commit else None
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        detail = getattr(exc, "detail", None)  # policy.StaffOnly: one sentence for the whole form too
        if detail:
            form.add_error(None, detail)
        for key, messages in errors.items():
            target = target_field(form, key, field_map)
            if target in already and target is not None:
                continue  # the form's own message for that field is the one to fix first
            for message in messages:
                form.add_error(target, message)
        return None
    return result


def block_errors(kind: str, block: dict[str, Any], *, rounds: int = 20) -> list[tuple[str, str]]:
    """Every problem of a backend settings block as (dotted field, reason), in the backend's own
    words: its parser stops at the first, so each failing key is dropped and the rest re-checked."""
    data, found = dict(block), []
    for _ in range(rounds):
        try:
            config_class(kind).from_dict(data)
            break
        except InvalidJobSpec as exc:
            found.append((exc.field, exc.reason))
            key = exc.field.split(".", 2)[1] if exc.field.startswith(f"{kind}.") else None
            if key not in data:
                break  # not one key's fault (e.g. the whole block): nothing more to learn
            del data[key]
    return found


def root_errors(roots: list[str]) -> list[str]:
    """Each refused data root's message (catalog checks a list up to its first bad root)."""
    from jobs.services.catalog import (
        _clean_roots,  # the one rule the API and imports use too
    )

    messages = []
    for root in roots:
        try:
            _clean_roots([root])
        except ValidationError as exc:
            messages.extend(exc.message_dict.get("allowed_data_roots", exc.messages))
    return messages
