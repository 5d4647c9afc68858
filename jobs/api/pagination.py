"""Keyset (cursor) pagination: newest first for jobs, oldest first for events. No COUNT(*), so a
page costs the same at 100k rows as at 100 (the id-ordered indexes on Job/JobEvent serve it).

`cursor` and `page_size` are checked like every other query parameter: a cursor this API did not
hand out, or a page size outside 1..max_page_size, is a 400 naming the parameter (DRF would answer
a bad cursor with 404, clamp the page size, and let a forged cursor's position reach the query)."""

import re

from rest_framework import exceptions
from rest_framework.pagination import CursorPagination

_POSITION = re.compile(r"[0-9]{1,19}")
_PAGE_SIZE = re.compile(r"[0-9]{1,6}")
BIGINT_MAX = 2**63 - 1


class _CheckedCursorPagination(CursorPagination):
    def decode_cursor(self, request):
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            cursor = None
            valid = False
        else:
            position = None if cursor is None else cursor.position
            valid = position is None or bool(_POSITION.fullmatch(position)) and int(position) <= BIGINT_MAX
        if not valid:
            raise exceptions.ValidationError(
                {self.cursor_query_param: ["Invalid cursor: use a `next` or `previous` link."]})
        return cursor

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not _PAGE_SIZE.fullmatch(raw) or not 1 <= int(raw) <= self.max_page_size:
            raise exceptions.ValidationError(
                {self.page_size_query_param: [f"Must be a whole number from 1 to {self.max_page_size}."]})
        return int(raw)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
                parameter["description"] = f"Results per page, 1-{self.max_page_size} (default {self.page_size})."
            elif parameter["name"] == self.cursor_query_param:
                parameter["description"] = "A `next` or `previous` link's cursor; any other value is a 400."
        return parameters


class JobCursorPagination(_CheckedCursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class EventCursorPagination(_CheckedCursorPagination):
    ordering = "id"
    page_size = 200
    page_size_query_param = "page_size"
    max_page_size = 1000
