"""Body limits, JSON and YAML for the API.

DRF parsers read the request stream directly, which skips Django's DATA_UPLOAD_MAX_MEMORY_SIZE check
(that lives in HttpRequest.body), so the limit is enforced here: a larger body is a 413, never read
into memory.

Every body, JSON or YAML, is checked once parsed (`check_body`), so that nothing the database or a
later answer cannot hold is ever stored: at most MAX_DEPTH levels of nesting; numbers finite and
integers within 64 bits (`1e400` would be `inf`); strings and keys without NUL or lone surrogates
(`"\\ud800"` is valid JSON text but no valid UTF-8); keys are strings and values JSON's own types
(YAML's timestamps and binary are refused). A refusal is a 400: `{"detail": ...}` for the body as a
whole (malformed, too deep), else `{"<where>": [problem]}` naming the value (`job_meta.name`).
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.conf import settings
from rest_framework import exceptions, parsers, renderers, status

from jobs.services.values import MAX_DEPTH, Unstorable, check_storable


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "Request body too large."
    default_code = "payload_too_large"


def body_limit() -> int:
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def check_content_length(request) -> None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise exceptions.ParseError("Invalid Content-Length header.") from None
    if length > body_limit():
        raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {body_limit()} bytes.")


def read_limited(stream) -> bytes:
    if stream is None:
        return b""
    data = stream.read(body_limit() + 1)
    if len(data) > body_limit():
        raise PayloadTooLarge(f"Request body is larger than the limit of {body_limit()} bytes.")
    return data


def check_body(value: Any, what: str = "JSON") -> Any:
    """Refuse (a 400) what no field of the API accepts, wherever it is in `value`
    (jobs.services.values). Returns `value`."""
    try:
        return check_storable(value)
    except Unstorable as exc:
        if not exc.path:
            raise exceptions.ParseError(f"Invalid {what}: {exc.problem}.") from None
        raise exceptions.ValidationError({exc.path: [f"Invalid {what}: {exc.problem}."]}) from None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def json_load(raw: bytes, encoding: str = "utf-8") -> Any:
    """JSON text -> value, with check_body's limits. ParseError (400) otherwise."""
    try:
        # 1e400 parses to inf and 10**100 to an int: check_body refuses both, naming where they are.
        # Python itself refuses integers of more than 4300 digits (ValueError).
        value = json.loads(raw.decode(encoding), parse_constant=_refuse_constant)
    except RecursionError:
        raise exceptions.ParseError(f"Invalid JSON: nested deeper than {MAX_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise exceptions.ParseError(f"Malformed JSON: {exc}") from None
    return check_body(value, "JSON")


class LimitedJSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = read_limited(stream)
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        return json_load(raw, encoding)


class YAMLParser(parsers.BaseParser):
    """application/yaml bodies (NVFlare's study files), loaded with study_files.yaml_load: safe types only,
    no aliases, bounded size and depth, and the same limits on values as JSON bodies."""

    media_type = "application/yaml"

    def parse(self, stream, media_type=None, parser_context=None):
        from jobs.services.study_files import StudyFileError, yaml_load

        raw = read_limited(stream)
        try:
            return yaml_load(raw, "the YAML body")
        except StudyFileError as exc:
            raise exceptions.ParseError(str(exc)) from None


class XYAMLParser(YAMLParser):
    media_type = "application/x-yaml"


class TextYAMLParser(YAMLParser):
    media_type = "text/yaml"


class YAMLRenderer(renderers.BaseRenderer):
    media_type = "application/yaml"
    format = "yaml"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        if data is None:
            return b""
        return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True).encode()


YAML_PARSERS = [YAMLParser, XYAMLParser, TextYAMLParser]
