"""The served schema declares what the API does (issue 14): every error status an operation can give,
in the API's two error shapes, the content types as served, and request bodies as strict as the
validation. tests/api/test_fuzz.py checks the same against the running API with schemathesis."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]
ERROR_REFS = {"#/components/schemas/ErrorDetail", "#/components/schemas/ValidationError"}


@pytest.fixture
def schema(as_user, users):
    response = as_user("viewer").get("/api/schema/?format=json")
    assert response.status_code == 200
    return response.json()


def operations(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_every_operation_declares_its_errors_in_the_two_shapes(schema):
    seen = 0
    for path, method, operation in operations(schema):
        seen += 1
        responses = operation["responses"]
        assert "default" not in responses, (method, path)
        assert {"400", "401", "429"} <= set(responses), (method, path, sorted(responses))
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in operation:
            assert "415" in responses and "413" in responses, (method, path)
        for status, response in responses.items():
            if status >= "400":
                assert list(response["content"]) == ["application/json"], (method, path, status)
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == ("#/components/schemas/ValidationError" if status == "400" else
                               "#/components/schemas/ErrorDetail"), (method, path, status)
    assert seen == 27
    components = schema["components"]["schemas"]
    assert components["ErrorDetail"]["required"] == ["detail"]
    assert {r["$ref"] for r in components["ValidationError"]["anyOf"]} == {
        "#/components/schemas/ErrorDetail", "#/components/schemas/FieldErrors"}


def test_job_reads_never_forbid_and_job_ids_are_integers(schema):
    for path in ("/api/v1/jobs/", "/api/v1/jobs/{id}/", "/api/v1/jobs/{id}/events/", "/api/v1/jobs/{id}/logs/",
                 "/api/v1/jobs/{id}/wait/"):
        assert "403" not in schema["paths"][path]["get"]["responses"], path
        for parameter in schema["paths"][path]["get"].get("parameters", []):
            if parameter["name"] == "id":
                assert parameter["schema"] == {"type": "integer", "minimum": 1, "maximum": 10**18 - 1}


def test_study_files_declare_yaml_and_json_as_served(schema):
    for path in ("/api/v1/sites/{site}/study-data/", "/api/v1/sites/{site}/study-runtime/"):
        get, put = schema["paths"][path]["get"], schema["paths"][path]["put"]
        assert set(get["responses"]["200"]["content"]) == {"application/yaml", "application/json"}
        assert set(put["requestBody"]["content"]) == {"application/yaml", "application/x-yaml", "text/yaml",
                                                      "application/json"}
        assert "406" in get["responses"]


def test_request_bodies_are_as_strict_as_the_validation(schema):
    components = schema["components"]["schemas"]
    for name in ("JobSubmit", "SiteInput", "PatchedSiteInput", "StudyInput", "DatasetInput", "SiteTestInput",
                 "DatasetSpec"):
        assert components[name]["additionalProperties"] is False, name
    submit = components["JobSubmit"]["properties"]
    assert submit["job_id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
    assert submit["job_args"]["required"] == ["exe_module"] and submit["job_args"]["additionalProperties"] is False
    assert submit["job_meta"]["additionalProperties"] is False and "byoc" in submit["job_meta"]["properties"]
    assert components["SiteInput"]["properties"]["docker"]["additionalProperties"] is False
    timeout = next(p for p in schema["paths"]["/api/v1/jobs/{id}/wait/"]["get"]["parameters"] if p["name"] == "timeout")
    assert timeout["schema"] == {"type": "number", "minimum": 0, "maximum": 60}
