"""Converting between the simple /api JSON and FHIR resources, as a mapping file says.

Writing starts from the stored resource, so FHIR elements that the mapping does not cover (added
by a partner through /fhir) survive an update made through /api.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date, datetime

from vitasync_fhir.fhir.validation import choice_siblings, validate
from vitasync_fhir.mapping import paths
from vitasync_fhir.mapping.spec import Component, FieldSpec, Kind, Mapping, Unit

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
        simple[name] = _field(mapping, spec, resource)
    if kind:
        for name, component in kind[1].components.items():
            simple[name] = _component_value(resource, component)
    return simple


def _field(mapping: Mapping, spec: FieldSpec, resource: dict) -> object:
    """The /api value of one field, as `to_fhir` compares it to tell what a client changed."""
    raw = paths.get(resource, spec.steps)
    if spec.type == "quantity":
        kind = _kind_of(mapping, resource)
        return _in_unit(raw, spec.unit or (kind[1].unit if kind else None))
    found = _read(spec, raw)
    if found is None and spec.fallback_steps is not None:
        found = _read(spec, paths.get(resource, spec.fallback_steps))
    if found is None and spec.type == "datetime" and len(spec.steps) == 1:
        return _period_start(mapping, resource, spec.steps[0].name)
    return found


def _read(spec: FieldSpec, raw: object) -> object:
    if raw is None:
        return None
    if spec.type == "reference":
        return _reference_id(spec, raw)
    return raw


def _period_start(mapping: Mapping, resource: dict, name: str) -> object:
    """A partner's performedPeriod where /api reads performedDateTime: its start, so that sending
    it back unchanged leaves the Period as it is."""
    for sibling in choice_siblings(mapping.resource, name):
        if sibling.endswith("Period") and isinstance(resource.get(sibling), dict):
            return resource[sibling].get("start")
    return None


def _in_unit(quantity: object, unit: Unit | None) -> object:
    """The value of a quantity in the unit /api speaks; None for another unit (a weight in
    pounds, a supply in weeks), which /api cannot show as a number of its unit."""
    if not isinstance(quantity, dict):
        return None
    if unit is not None and not _is_unit(quantity, unit):
        return None
    return quantity.get("value")


def _is_unit(quantity: dict, unit: Unit) -> bool:
    """Whether a quantity is in `unit`: by its code, or, without one, by the unit it writes for
    people (a partner's temperature of 98.6 "degF" is no 98.6 °C). A bare number is taken as is."""
    code = quantity.get("code")
    if code is not None:
        return code == unit.code
    written = quantity.get("unit")
    return written is None or written in (unit.unit, unit.code)


def _reference_id(spec: FieldSpec, raw: object) -> str | None:
    """The id of a reference to the field's target type; None for anything else (a contained
    #ref, an Organization where a Practitioner is expected, an identifier alone), which /api
    cannot show as an id of the target and so leaves as it is."""
    found = paths.reference_id(raw, spec.target)  # type: ignore[arg-type]
    return found if found and _ID.match(found) else None


def is_of_kind(mapping: Mapping, resource: dict) -> bool:
    """Whether the resource is one of the mapping's kinds (a vital sign of its table)."""
    return _kind_of(mapping, resource) is not None


def _kind_of(mapping: Mapping, resource: dict) -> tuple[str, Kind] | None:
    if not mapping.kinds:
        return None
    codings = resource.get("code", {}).get("coding", [])
    for name, kind in mapping.kinds.values.items():
        if any(c.get("system") == kind.system and c.get("code") == kind.code for c in codings):
            return name, kind
    return None


def _component(resource: dict, code: str) -> dict | None:
    for component in resource.get("component", []):
        if any(c.get("code") == code for c in component.get("code", {}).get("coding", [])):
            return component
    return None


def _component_value(resource: dict, component: Component) -> object:
    found = _component(resource, component.code)
    return _in_unit(found.get("valueQuantity"), component.unit) if found else None


# -- simple -> FHIR ---------------------------------------------------------------------------


def patched(mapping: Mapping, current: dict, changes: dict) -> dict:
    """The record a PATCH asks for: `changes` over the `current` record, whose values stay. A new
    kind keeps none of the old kind's measurement (a heart rate of 81 is no weight of 81 kg, a
    blood pressure has no value of its own): what the new kind measures is sent with it."""
    merged = {**current, **changes}
    kinds = mapping.kinds
    if kinds and kinds.field in changes and changes[kinds.field] != current.get(kinds.field):
        measured = {kinds.value_field} | {n for k in kinds.values.values() for n in k.components}
        for name in measured - set(changes):
            merged.pop(name, None)
    return merged


def unpaired(mapping: Mapping, current: dict, changes: dict) -> list[FieldError]:
    """The fields a PATCH must send with those it changes (`goes_with`, both ways): a new drug
    name beside the old drug's code, or a new code beside the old name, would name two drugs."""
    errors = []
    for name, spec in mapping.fields.items():
        other = spec.goes_with
        if other is None:
            continue
        for changed, missing in ((name, other), (other, name)):
            if (
                changed in changes
                and changes[changed] != current.get(changed)
                and missing not in changes
                and current.get(missing) is not None
            ):
                errors.append(
                    FieldError(missing, f"must be sent with {changed}, which names the same thing")
                )
    return errors


def filled_on_create(mapping: Mapping, simple: object, *, now: str, caller: str | None) -> object:
    """`simple` with the fields a create leaves out (or null) filled as `on_create` says: `now`,
    or the id of the `caller` ("Practitioner/9") when it is of the field's target type."""
    if not isinstance(simple, dict):
        return simple
    filled = dict(simple)
    for name, spec in mapping.fields.items():
        if spec.on_create is None or filled.get(name) is not None:
            continue
        if spec.on_create == "now":
            filled[name] = now
        elif caller and caller.startswith(f"{spec.target}/"):
            filled[name] = caller.removeprefix(f"{spec.target}/")
    return filled


def to_fhir(
    mapping: Mapping,
    simple: object,
    *,
    existing: dict | None = None,
    sent: Collection[str] | None = None,
) -> dict:
    """The FHIR resource for `simple`; InvalidInput if invalid.

    Over `existing`, only the fields whose /api value changed are written, each in place: what
    /api does not show (other array items, a reference's display, a Period) stays as it was.
    `sent` names the fields a PATCH sent: a required field it leaves alone is not asked for (an
    account made without a name can still change its phone); None checks every one, as a create
    and a PUT do.
    """
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
    before = _kind_of(mapping, existing) if existing else None
    same_kind = kind is not None and before is not None and before[1] is kind
    for name, spec in mapping.fields.items():
        if spec.readonly:
            continue
        # A new kind rewrites its value even when the number is the same: the unit changes.
        rewrite = kind is not None and name == mapping.kinds.value_field  # type: ignore[union-attr]
        rewrite = rewrite and not same_kind
        value = simple.get(name, spec.default)
        required = spec.required and (sent is None or name in sent)
        _write_field(
            mapping, resource, name, spec, value, kind, errors, rewrite=rewrite, required=required
        )
    # Fixed values fill gaps only, once the fields are written (a participant's status goes in
    # the item its actor made): a partner's own value (an emergency Encounter's class) stays.
    for path, value in mapping.fixed.items():
        steps = paths.parse(path)
        if paths.get(resource, steps) is None:
            paths.put(resource, steps, copy.deepcopy(value))
    if kind:
        _write_kind(resource, simple, kind, errors, same_kind=same_kind)
        value_given = simple.get(mapping.kinds.value_field) is not None  # type: ignore[union-attr]
        kept = same_kind and _value_kept(mapping, resource)
        if kind.unit and not value_given and not kept:
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


def _write_field(
    mapping: Mapping,
    resource: dict,
    name: str,
    spec: FieldSpec,
    value: object,
    kind: Kind | None,
    errors: list[FieldError],
    *,
    rewrite: bool = False,
    required: bool = False,
) -> None:
    """Set one field where it lives, in place: a value read back unchanged leaves the element
    as it was (its display, its unit, a Period, the other items of its array)."""
    if not rewrite and _same(value, _field(mapping, spec, resource)):
        if value is None and required and not _held_otherwise(mapping, spec, resource):
            errors.append(FieldError(name, "is required"))
        return
    if value is None:
        if spec.required:
            errors.append(FieldError(name, "is required"))
            return
        paths.remove(resource, spec.steps)
        _drop_broken_item(mapping, resource, spec)
        return
    try:
        written = _write(spec, value, kind)
    except ValueError as error:
        errors.append(FieldError(name, str(error)))
        return
    if spec.above is not None and value <= spec.above:  # type: ignore[operator]
        errors.append(FieldError(name, f"must be greater than {spec.above:g}"))
        return
    for sibling in choice_siblings(mapping.resource, spec.steps[0].name):
        resource.pop(sibling, None)  # one of effective[x]: the new value replaces a Period
        resource.pop("_" + sibling, None)
    replaced = _is_coding_code(spec.steps) and _field(mapping, spec, resource) is not None
    paths.put(resource, spec.steps, written)
    if replaced:
        # Another concept: the old code's display and its translations into other systems
        # described what was there before, so the new code stands alone.
        concept = paths.get(resource, spec.steps[:-2])
        concept["coding"] = [{"system": spec.steps[-2].value, "code": written}]  # type: ignore[index]


def _is_coding_code(steps: tuple[paths.Step, ...]) -> bool:
    """A path to the code of a coding of one system: `vaccineCode.coding[system=...].code`."""
    return len(steps) >= 3 and steps[-1].name == "code" and steps[-2].key == "system"


def _drop_broken_item(mapping: Mapping, resource: dict, spec: FieldSpec) -> None:
    """A cleared field that was what its array item needs (a note's text, a performer's actor):
    the item goes too, rather than stay behind invalid (an Annotation with its author alone)."""
    step = spec.steps[0]  # note[0].text, performer[0].actor: an item of a top-level array
    items = resource.get(step.name)
    if step.index is None or not isinstance(items, list) or step.index >= len(items):
        return
    inside = f"{mapping.resource}.{step.name}[{step.index}]."
    if any(p.code == "required" and p.expression.startswith(inside) for p in validate(resource)):
        del items[step.index]
        if not items:
            del resource[step.name]


def _same(value: object, old: object) -> bool:
    return type(value) is type(old) and value == old


def _held_otherwise(mapping: Mapping, spec: FieldSpec, resource: dict) -> bool:
    """Whether the resource holds the element in a form /api does not read: medicationReference
    for a medication the mapping reads from medicationCodeableConcept."""
    siblings = choice_siblings(mapping.resource, spec.steps[0].name)
    return any(sibling in resource for sibling in siblings)


def _value_kept(mapping: Mapping, resource: dict) -> bool:
    """Whether an update kept a value /api does not show (a valueCodeableConcept, a weight in
    pounds): the kind still has its value."""
    spec = mapping.fields[mapping.kinds.value_field]  # type: ignore[union-attr]
    return paths.get(resource, spec.steps) is not None or _held_otherwise(mapping, spec, resource)


def _input_kind(mapping: Mapping, simple: dict, errors: list[FieldError]) -> Kind | None:
    if not mapping.kinds:
        return None
    name = simple.get(mapping.kinds.field)
    kind = mapping.kinds.values.get(name) if isinstance(name, str) else None
    if kind is None:
        choices = ", ".join(mapping.kinds.values)
        errors.append(FieldError(mapping.kinds.field, f"must be one of {choices}"))
    return kind


def _write_kind(
    resource: dict,
    simple: dict,
    kind: Kind,
    errors: list[FieldError],
    *,
    same_kind: bool,
) -> None:
    if same_kind:
        # The same kind: its other codings, profiles, components and their interpretation stay.
        _update_components(resource, simple, kind, errors)
        return
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
            {**_new_component(kind, component), "valueQuantity": _quantity(value, component.unit)}
        )
    if components:
        resource["component"] = components


def _new_component(kind: Kind, component: Component) -> dict:
    coding = {"system": kind.system, "code": component.code, "display": component.display}
    return {"code": {"coding": [coding]}}


def _update_components(resource: dict, simple: dict, kind: Kind, errors: list[FieldError]) -> None:
    for name, component in kind.components.items():
        value, found = simple.get(name), _component(resource, component.code)
        if _same(value, _component_value(resource, component)) and found is not None:
            continue  # unchanged, or held in a unit /api does not show
        if not _is_number(value):
            errors.append(FieldError(name, "is required for this kind and must be a number"))
            continue
        if found is None:
            found = _new_component(kind, component)
            resource.setdefault("component", []).append(found)
        for other in [k for k in found if k.startswith("value") or k == "dataAbsentReason"]:
            del found[other]
        found["valueQuantity"] = _quantity(value, component.unit)


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
