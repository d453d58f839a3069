"""The error answers in the OpenAPI description, documented once for every route as errors.py
renders them: an OperationOutcome (application/fhir+json) under /fhir, `{"error", "detail"}`
elsewhere. FastAPI alone would document only its own 422 shape, which this app never sends.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

OPERATION_OUTCOME = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": {"type": "array", "items": {"type": "object"}},
    },
}
API_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "detail": {}},
}
FHIR_JSON = "application/fhir+json"
_METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def install(app: FastAPI) -> None:
    """Wrap `app.openapi` so the generated description carries the error answers."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["OperationOutcome"] = OPERATION_OUTCOME
    components["ApiError"] = API_ERROR
    for path, item in schema.get("paths", {}).items():
        fhir = path == "/fhir" or path.startswith("/fhir/")
        error = _error(fhir)
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            for status, response in list(responses.items()):
                if _is_fastapi_422(response):
                    responses[status] = error
                elif fhir and status.startswith("2"):
                    _also_fhir_json(response)
            responses["default"] = error
    return schema


def _error(fhir: bool) -> dict[str, Any]:
    if fhir:
        ref = {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}
        return {"description": "An OperationOutcome", "content": {FHIR_JSON: ref}}
    ref = {"schema": {"$ref": "#/components/schemas/ApiError"}}
    return {"description": "An error", "content": {"application/json": ref}}


def _is_fastapi_422(response: dict[str, Any]) -> bool:
    content = response.get("content", {}).get("application/json", {})
    return content.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError")


def _also_fhir_json(response: dict[str, Any]) -> None:
    content = response.get("content")
    if content and "application/json" in content and FHIR_JSON not in content:
        content[FHIR_JSON] = content["application/json"]
