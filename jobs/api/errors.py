"""One error shape for the API: `{"detail": ...}` or `{field: [messages]}`. Client mistakes are
4xx, never 500: service errors (InvalidJobSpec, Django ValidationError, SiteBusy, a staff-only change) and request
errors (malformed body, body too large) are mapped here."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from backends.base import BackendError, InvalidJobSpec


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Conflict."
    default_code = "conflict"


def exception_handler(exc, context):
    from jobs.services.catalog import SiteBusy
    from jobs.services.policy import StaffOnly

    if isinstance(exc, StaffOnly):  # before ValidationError, which it is (so forms show it inline)
        exc = exceptions.PermissionDenied(exc.detail)
    if isinstance(exc, InvalidJobSpec):
        return Response({exc.field: [exc.reason]}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, BackendError):
        code = status.HTTP_503_SERVICE_UNAVAILABLE if exc.retryable else status.HTTP_502_BAD_GATEWAY
        return Response({"detail": str(exc)}, status=code)
    if isinstance(exc, SiteBusy):
        exc = Conflict(str(exc))
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "Request body too large."}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages})
    return drf_exception_handler(exc, context)
