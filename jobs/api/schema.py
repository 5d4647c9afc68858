"""drf-spectacular extensions: how the schema describes our token authentication, and the
responses every operation can give besides its own.

Errors have two shapes, declared once as components and referenced by every operation:
`ErrorDetail` (`{"detail": "..."}`) and, for 400, `ValidationError` (either that or `FieldErrors`,
`{field: [messages]}`). ApiAutoSchema adds to each operation the error statuses it can answer
(the same rules the views follow): 400, 401 and 429 everywhere; 403 unless the view says the
operation never forbids (job reads answer 404 for what the caller may not see); 404 where the
path names an object; 406 and 413 on the DRF views (content negotiation, the body limit); 415
where there is a request body. Statuses an operation adds itself (409, 502, 503) are declared with
`error_response()` on the view. A `default` response is never used: a status the schema does not
name is a bug (tests/api/test_fuzz.py runs schemathesis's status_code_conformance).
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import OpenApiResponse

ERROR_DETAIL = "ErrorDetail"
FIELD_ERRORS = "FieldErrors"
VALIDATION_ERROR = "ValidationError"
COMPONENTS = {
    ERROR_DETAIL: {
        "type": "object",
        "description": "An error about the request as a whole.",
        "properties": {"detail": {"type": "string"}},
        "required": ["detail"],
    },
    FIELD_ERRORS: {
        "type": "object",
        "description": "Errors by field or query parameter: `{name: [messages]}` (nested fields: an object or "
                       "a list of objects in the same shape; a dotted name such as `job_args.workspace` "
                       "names a value inside a field).",
        "additionalProperties": {"anyOf": [
            {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "object", "additionalProperties": {}}]}},
            {"type": "object", "additionalProperties": {}},
        ]},
    },
    VALIDATION_ERROR: {
        "description": "`FieldErrors`, or `ErrorDetail` when the body is not valid JSON/YAML (malformed, nested "
                       "deeper than 64 levels, a number out of range, NUL or a lone surrogate in a string).",
        "anyOf": [{"$ref": f"#/components/schemas/{ERROR_DETAIL}"}, {"$ref": f"#/components/schemas/{FIELD_ERRORS}"}],
    },
}
DESCRIPTIONS = {
    "400": "Invalid input; the body names each field or query parameter and the reason.",
    "401": "No credentials, or an invalid or revoked token.",
    "403": "Not allowed: the caller's role on the site is too low, a site token asked for site configuration, "
           "a setting only staff may change, or a session write without the CSRF token.",
    "404": "No such object, or not one the caller may see.",
    "406": "The Accept header names no media type this operation serves.",
    "409": "Conflict with the current state.",
    "413": "The body is larger than LAUNCHER_MAX_BODY_BYTES.",
    "415": "The Content-Type is not one this operation reads.",
    "429": "Too many failed token attempts from this address; retry after `Retry-After` seconds.",
    "502": "The site's engine refused the request.",
    "503": "The site's engine is unreachable or busy; retry later.",
}
BODY_METHODS = ("POST", "PUT", "PATCH")
JOB_PK_SCHEMA = {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}  # the routes take 1-18 digits


def error_response(status: int | str, description: str | None = None) -> OpenApiResponse:
    """An error response in the API's shape, for `extend_schema(responses={status: ...})`."""
    code = str(status)
    component = VALIDATION_ERROR if code == "400" else ERROR_DETAIL
    return OpenApiResponse({"$ref": f"#/components/schemas/{component}"}, description=description or DESCRIPTIONS[code])


class ApiAutoSchema(AutoSchema):
    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None or not path.startswith("/api/"):
            return operation
        for name, schema in COMPONENTS.items():
            registry.register_on_missing(ResolvedComponent(name=name, type=ResolvedComponent.SCHEMA, object=name,
                                                           schema=schema))
        responses = operation["responses"]
        for code in sorted(self._error_statuses(operation)):
            declared = responses.setdefault(code, {"description": DESCRIPTIONS[code]})
            if "content" not in declared:
                component = VALIDATION_ERROR if code == "400" else ERROR_DETAIL
                declared["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{component}"}}}
        return operation

    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        if getattr(serializer, "refuse_unknown_fields", False):  # jobs.api.serializers.StrictSerializer
            schema["additionalProperties"] = False
        return schema

    def _error_statuses(self, operation) -> set[str]:
        view = self.view
        action = getattr(view, "action", None) or self.method.lower()
        codes = {"400", "401", "429"}
        if action not in getattr(view, "never_forbidden", ()):
            codes.add("403")
        if any(p.get("in") == "path" for p in operation.get("parameters", ())):
            codes.add("404")
        if getattr(view, "negotiates_content", True):
            codes |= {"406", "413"}
        if self.method in BODY_METHODS and "requestBody" in operation:
            codes.add("415")
        return codes


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "jobs.api.auth.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <secret>`: a site token (the FL server: its own site's jobs only) or a user token "
                           "(acts as that user). Create one with `manage.py api_token --site NAME | --user NAME`.",
        }
