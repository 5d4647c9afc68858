"""Keyset (cursor) pagination: newest first for jobs, oldest first for events. No COUNT(*), so a
page costs the same at 100k rows as at 100 (the id-ordered indexes on Job/JobEvent serve it)."""

from rest_framework.pagination import CursorPagination


class JobCursorPagination(CursorPagination):
    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class EventCursorPagination(CursorPagination):
    ordering = "id"
    page_size = 200
    page_size_query_param = "page_size"
    max_page_size = 1000
