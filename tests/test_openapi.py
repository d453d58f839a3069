"""The OpenAPI description documents the errors the app really sends (vitasync_fhir/openapi.py)."""

from __future__ import annotations

import json


def test_every_operation_documents_its_error_answers(app):
    schema = app.openapi()
    assert "HTTPValidationError" not in json.dumps(schema["paths"])
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            error = operation["responses"]["default"]["content"]
            if path.startswith("/fhir"):
                assert error == {
                    "application/fhir+json": {
                        "schema": {"$ref": "#/components/schemas/OperationOutcome"}
                    }
                }, (method, path)
            else:
                assert error == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ApiError"}}
                }, (method, path)
    read = schema["paths"]["/fhir/metadata"]["get"]["responses"]["200"]["content"]
    assert "application/fhir+json" in read


def test_an_fhir_error_matches_its_documented_schema(client):
    answer = client.get("/fhir/Patient/does-not-exist")
    assert answer.status_code == 404
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"]
    assert client.post("/api/patients", json=[]).json()["error"]
