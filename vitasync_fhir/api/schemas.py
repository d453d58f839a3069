"""OpenAPI schemas of the /api JSON, generated from the mapping files."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from vitasync_fhir.mapping.spec import FieldSpec, Mapping

_PYTHON = {
    "string": str,
    "code": str,
    "integer": int,
    "decimal": float,
    "boolean": bool,
    "date": str,
    "datetime": str,
    "reference": str,
    "quantity": float,
}


def _annotation(spec: FieldSpec) -> Any:
    if spec.values:
        return Literal[tuple(spec.values)] | None  # type: ignore[valid-type]
    return _PYTHON[spec.type] | None


def _fields(mapping: Mapping) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, spec in mapping.fields.items():
        fields[name] = (
            _annotation(spec),
            Field(
                default=None,
                description=spec.description,
                examples=[spec.example] if spec.example is not None else None,
            ),
        )
    if mapping.kinds:
        kinds = tuple(mapping.kinds.values)
        fields[mapping.kinds.field] = (Literal[kinds] | None, Field(default=None))  # type: ignore[valid-type]
        for kind in mapping.kinds.values.values():
            for component in kind.components:
                fields[component] = (float | None, Field(default=None))
    return fields


_models: dict[tuple[str, str], type[BaseModel]] = {}


def _once(kind: str, mapping: Mapping, build) -> type[BaseModel]:  # type: ignore[no-untyped-def]
    key = (kind, mapping.name)
    if key not in _models:
        _models[key] = build()
    return _models[key]


def input_model(mapping: Mapping) -> type[BaseModel]:
    return _once("input", mapping, lambda: _input_model(mapping))


def output_model(mapping: Mapping) -> type[BaseModel]:
    return _once("output", mapping, lambda: _output_model(mapping))


def page_model(mapping: Mapping) -> type[BaseModel]:
    return _once("page", mapping, lambda: _page_model(mapping))


def _input_model(mapping: Mapping) -> type[BaseModel]:
    return create_model(
        f"{mapping.name.title()}Input",
        __config__=ConfigDict(extra="forbid"),
        id=(str | None, Field(default=None, description="Ignored: the id is in the URL")),
        version=(int | None, Field(default=None, description="The version you read; 409 if stale")),
        last_updated=(str | None, Field(default=None, description="Ignored: set by the server")),
        **_fields(mapping),
    )


def _output_model(mapping: Mapping) -> type[BaseModel]:
    return create_model(
        f"{mapping.name.title()}",
        id=(str, Field(description="The FHIR id")),
        version=(int | None, Field(default=None, description="The FHIR meta.versionId")),
        last_updated=(str | None, Field(default=None)),
        **_fields(mapping),
    )


def _page_model(mapping: Mapping) -> type[BaseModel]:
    return create_model(
        f"{mapping.name.title()}Page",
        items=(list[output_model(mapping)], ...),  # type: ignore[valid-type]
        page=(int, ...),
        per_page=(int, ...),
        total=(int, ...),
    )


class Error(BaseModel):
    error: str
    detail: Any


def body_schema(mapping: Mapping) -> dict:
    """The requestBody of a create or update, for openapi_extra."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": input_model(mapping).model_json_schema(
                        ref_template="#/components/schemas/{model}"
                    )
                }
            },
        }
    }
