"""What every API view shares: JSON in and out, the body limit, and audit helpers."""

from __future__ import annotations

from typing import Any

from rest_framework import renderers

from jobs.api.access import account_of, remote_addr, token_of
from jobs.api.parsers import LimitedJSONParser, check_content_length
from jobs.services.audit import audit_record


class ApiMixin:
    parser_classes = [LimitedJSONParser]
    renderer_classes = [renderers.JSONRenderer]  # JSON only, as the schema says (Swagger UI is at /api/docs/)

    def initial(self, request, *args, **kwargs):
        check_content_length(request)  # 413 before anything reads the body
        super().initial(request, *args, **kwargs)

    def audit(self, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        request = self.request
        audit_record(action=action, target=target, user=account_of(request), token=token_of(request),
                     detail=detail, remote_addr=remote_addr(request))
