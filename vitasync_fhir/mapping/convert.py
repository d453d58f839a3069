"""Converting between the simple /api JSON and FHIR resources, as a mapping file says.

Writing starts from the stored resource, so FHIR elements that the mapping does not cover (added
by a partner through /fhir) survive an update made through /api.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import date, datetime

from vitasync_fhir.mapping import paths
from vitasync_fhir.mapping.spec import FieldSpec, Kind, Mapping

ENGINE_FIELDS = ("id", "version", "last_updated")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class InvalidInput(Exception):
    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


# -- FHIR -> simple ---------------------------------------------------------------------------


def from_fhir(mapping: Mapping, resource: dict) -> dict:
    meta = resource.get("meta", {})
    simple: dict = {
        "id": resource.get("id"),
        "version": int(meta["versionId"]) if "versionId" in meta else None,
        "last_updated": meta.get("lastUpdated"),
    }
    kind = _kind_of(mapping, resource)
    if mapping.kinds:
        simple[mapping.kinds.field] = kind[0] if kind else None
    for name, spec in mapping.fields.items():
        simple[name] = _read(spec, paths.get(resource, spec.steps))
    if kind:
        for name, component in kind[1].components.items():
            simple[name] = _component_value(resource, component.code)
    return simple


def _read(spec: FieldSpec, raw: object) -> object:
    if raw is None:
        return None
    if spec.type == "reference":
        reference = raw.get("reference", "") if isinstance(raw, dict) else ""
        return reference.split("/")[-1] if reference else None
    if spec.type == "quantity":
        return raw.get("value") if isinstance(raw, dict) else None
    return raw


def _kind_of(mapping: Mapping, resource: dict) -> tuple[str, Kind] | None:
    if not mapping.kinds:
        return None
    codings = resource.get("code", {}).get("coding", [])
    for name, kind in mapping.kinds.values.items():
        if any(c.get("system") == kind.system and c.get("code") == kind.code for c in codings):
            return name, kind
    return None


def _component_value(resource: dict, code: str) -> object:
    for component in resource.get("component", []):
        if any(c.get("code") == code for c in component.get("code", {}).get("coding", [])):
            return component.get("valueQuantity", {}).get("value")
    return None


# -- simple -> FHIR ---------------------------------------------------------------------------


def to_fhir(mapping: Mapping, simple: object, *, existing: dict | None = None) -> dict:
    """The FHIR resource for `simple`, replacing every mapped field; InvalidInput if invalid."""
    if not isinstance(simple, dict):
        raise InvalidInput([FieldError("body", "must be a JSON object")])
    errors: list[FieldError] = []
    kind = _input_kind(mapping, simple, errors)
    allowed = set(mapping.fields) | set(ENGINE_FIELDS)
    if mapping.kinds:
        allowed.add(mapping.kinds.field)
        allowed |= {n for k in mapping.kinds.values.values() for n in k.components}
    errors += [
        FieldError(name, "is not a field of this resource")
        for name in simple
        if name not in allowed
    ]
    version = simple.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
        errors.append(FieldError("version", "must be the whole version number you read"))
    for name in ("id", "last_updated"):
        if simple.get(name) is not None and not isinstance(simple[name], str):
            errors.append(FieldError(name, "must be a string (it is set by the server)"))
    resource = copy.deepcopy(existing) if existing else {"resourceType": mapping.resource}
    for path, value in mapping.fixed.items():
        paths.put(resource, paths.parse(path), copy.deepcopy(value))
    for name, spec in mapping.fields.items():
        value = simple.get(name, spec.default)
        if spec.readonly:
            continue
        paths.remove(resource, spec.steps)
        if value is None:
            if spec.required:
                errors.append(FieldError(name, "is required"))
            continue
        try:
            paths.put(resource, spec.steps, _write(spec, value, kind))
        except ValueError as error:
            errors.append(FieldError(name, str(error)))
    if kind:
        _write_kind(resource, simple, kind, errors)
        value_given = simple.get(mapping.kinds.value_field) is not None  # type: ignore[union-attr]
        if kind.unit and not value_given:
            errors.append(FieldError(mapping.kinds.value_field, "is required for this kind"))  # type: ignore[union-attr]
        if kind.components and value_given:
            errors.append(
                FieldError(
                    mapping.kinds.value_field,
                    f"is not used for this kind; give {', '.join(kind.components)}",
                )
            )  # type: ignore[union-attr]
    if errors:
        raise InvalidInput(errors)
    return resource


def _input_kind(mapping: Mapping, simple: dict, errors: list[FieldError]) -> Kind | None:
    if not mapping.kinds:
        return None
    name = simple.get(mapping.kinds.field)
    kind = mapping.kinds.values.get(name) if isinstance(name, str) else None
    if kind is None:
        choices = ", ".join(mapping.kinds.values)
        errors.append(FieldError(mapping.kinds.field, f"must be one of {choices}"))
    return kind


def _write_kind(resource: dict, simple: dict, kind: Kind, errors: list[FieldError]) -> None:
    resource["code"] = {
        "coding": [{"system": kind.system, "code": kind.code, "display": kind.display}],
        "text": kind.display,
    }
    if kind.profile:
        resource.setdefault("meta", {})["profile"] = [kind.profile]
    resource.pop("component", None)
    components = []
    for name, component in kind.components.items():
        value = simple.get(name)
        if not _is_number(value):
            errors.append(FieldError(name, "is required for this kind and must be a number"))
            continue
        components.append(
            {
                "code": {
                    "coding": [
                        {
                            "system": kind.system,
                            "code": component.code,
                            "display": component.display,
                        }
                    ]
                },
                "valueQuantity": _quantity(value, component.unit),
            }
        )
    if components:
        resource["component"] = components


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _quantity(value: object, unit) -> dict:  # type: ignore[no-untyped-def]
    return {
        "value": value,
        "unit": unit.unit or unit.code,
        "system": unit.system,
        "code": unit.code,
    }


def _write(spec: FieldSpec, value: object, kind: Kind | None) -> object:
    kind_name = spec.type
    if kind_name in ("string", "code"):
        if not isinstance(value, str) or not value.strip():
            raise ValueError("must be a non-empty string")
        if spec.values is not None and value not in spec.values:
            raise ValueError(f"must be one of {', '.join(spec.values)}")
        return value
    if kind_name == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("must be a whole number")
        return value
    if kind_name in ("decimal", "quantity"):
        if not _is_number(value):
            raise ValueError("must be a number")
        if kind_name == "decimal":
            return value
        unit = spec.unit or (kind.unit if kind else None)
        if unit is None:
            raise ValueError("has no unit for this kind")
        return _quantity(value, unit)
    if kind_name == "boolean":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind_name == "date":
        if not isinstance(value, str):
            raise ValueError("must be a date like 2024-05-01")
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be a date like 2024-05-01") from None
        return value
    if kind_name == "datetime":
        return _datetime(value)
    if kind_name == "reference":
        if not isinstance(value, str) or not _ID.match(value):
            raise ValueError(f"must be the id of a {spec.target}")
        return {"reference": f"{spec.target}/{value}"}
    raise ValueError(f"has an unknown type {kind_name}")


def _datetime(value: object) -> str:
    if not isinstance(value, str) or "T" not in value:
        raise ValueError("must be a date and time like 2024-05-01T09:30:00Z")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date and time like 2024-05-01T09:30:00Z") from None
    if moment.tzinfo is None:
        raise ValueError("needs a time zone, like 2024-05-01T09:30:00Z or +02:00")
    return value
