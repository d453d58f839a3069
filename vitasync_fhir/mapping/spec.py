"""The schema of a mapping file, checked when the files are loaded.

A broken mapping stops the start with a message naming the file and the field, instead of failing
on the first request that uses it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vitasync_fhir.fhir.models import is_resource_type
from vitasync_fhir.fhir.search.registry import search_parameters
from vitasync_fhir.mapping import paths

MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings"

FieldType = Literal[
    "string", "code", "integer", "decimal", "boolean", "date", "datetime", "reference", "quantity"
]


class MappingError(Exception):
    pass


class Unit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    unit: str | None = None
    system: str = "http://unitsofmeasure.org"


class FieldSpec(BaseModel):
    """One field of the simple JSON and where it lives in the FHIR resource."""

    model_config = ConfigDict(extra="forbid")
    path: str
    # Where to read the value when `path` holds none, never written: the display of a partner's
    # coding where /api writes a text (Synthea's medications have no text), so that the record
    # shows its medication and sending it back unchanged adds no text and drops no coding.
    fallback: str | None = None
    type: FieldType = "string"
    required: bool = False
    readonly: bool = False
    target: str | None = None
    values: list[str] | None = None
    default: str | int | float | bool | None = None
    unit: Unit | None = None
    above: float | None = None  # a number must be greater than this (0: a positive quantity)
    # What a create that leaves the field out gets: `now`, the server's clock (a datetime);
    # `caller`, the caller's own resource of the target type (a doctor is the prescriber).
    on_create: Literal["now", "caller"] | None = None
    # A field that names the same thing another way (a drug's name and its RxNorm code): a PATCH
    # that changes one must send the other, or the record would name two drugs.
    goes_with: str | None = None
    example: str | int | float | bool | None = None
    description: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        paths.parse(self.path)
        if self.fallback is not None:
            paths.parse(self.fallback)
            if self.type not in ("string", "code"):
                raise ValueError("only a string or code field reads a fallback")
        if self.above is not None and self.type not in ("integer", "decimal", "quantity"):
            raise ValueError("only a number field has a lower bound (above)")
        if self.type == "reference" and not (self.target and is_resource_type(self.target)):
            raise ValueError(f"a reference field needs a known target type, not {self.target!r}")
        if self.values is not None and self.type != "code":
            raise ValueError("only a code field lists values")
        if self.default is not None and self.values is not None and self.default not in self.values:
            raise ValueError(f"default {self.default!r} is not among the values")
        wanted = {"now": "datetime", "caller": "reference"}.get(self.on_create or "")
        if wanted and self.type != wanted:
            raise ValueError(f"on_create {self.on_create!r} fills only a {wanted} field")
        return self

    @property
    def steps(self) -> tuple[paths.Step, ...]:
        return paths.parse(self.path)

    @property
    def fallback_steps(self) -> tuple[paths.Step, ...] | None:
        return paths.parse(self.fallback) if self.fallback is not None else None


class Component(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str
    display: str
    unit: Unit


class Kind(BaseModel):
    """One kind of a resource whose code decides its shape (a vital sign)."""

    model_config = ConfigDict(extra="forbid")
    code: str
    display: str
    system: str = "http://loinc.org"
    profile: str | None = None
    unit: Unit | None = None
    components: dict[str, Component] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _shape(self) -> Kind:
        if (self.unit is None) == (not self.components):
            raise ValueError("a kind has either a unit (one value) or components, not both")
        return self


class Kinds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    value_field: str
    values: dict[str, Kind]


class Listing(BaseModel):
    """How the list route filters and sorts: /api names mapped to FHIR search parameters."""

    model_config = ConfigDict(extra="forbid")
    filters: dict[str, str] = Field(default_factory=dict)
    date: str | None = None  # the FHIR date parameter behind ?from= and ?to=
    sort: dict[str, str] = Field(default_factory=dict)  # /api field -> FHIR search parameter


class Mapping(BaseModel):
    """One /api resource: its name, its FHIR type and its fields."""

    model_config = ConfigDict(extra="forbid")
    name: str
    resource: str
    description: str = ""
    fixed: dict[str, object] = Field(default_factory=dict)
    fields: dict[str, FieldSpec]
    kinds: Kinds | None = None
    listing: Listing = Field(default_factory=Listing)

    @model_validator(mode="after")
    def _known(self) -> Mapping:
        if not is_resource_type(self.resource):
            raise ValueError(f"resource {self.resource!r} is not a FHIR R4 resource type")
        reserved = {"id", "version", "last_updated"} & set(self.fields)
        if reserved:
            raise ValueError(f"fields {sorted(reserved)} are added by the engine; remove them")
        for path in self.fixed:
            paths.parse(path)
        if self.kinds and self.kinds.field in self.fields:
            raise ValueError(f"the kinds field {self.kinds.field!r} must not also be a field")
        if self.kinds and self.kinds.value_field not in self.fields:
            raise ValueError(f"the kinds value field {self.kinds.value_field!r} is not a field")
        known = {p["name"] for p in search_parameters(self.resource)} | {"_id", "_lastUpdated"}
        used = [*self.listing.filters.values(), *self.listing.sort.values(), self.listing.date]
        unknown = sorted({p for p in used if p and p not in known})
        if unknown:
            raise ValueError(f"listing names unknown {self.resource} search parameters {unknown}")
        for name, field in self.fields.items():
            if field.goes_with is not None and field.goes_with not in self.fields:
                raise ValueError(f"field {name!r} goes with {field.goes_with!r}, not a field")
            if field.type == "quantity" and field.unit is None and self.kinds is None:
                raise ValueError(
                    f"field {name!r}: a quantity needs a unit (or kinds that give one)"
                )
        return self


def load_file(path: Path) -> Mapping:
    try:
        data = yaml.safe_load(path.read_text())
        return Mapping.model_validate(data)
    except (yaml.YAMLError, ValidationError, paths.PathError, OSError) as error:
        raise MappingError(f"mapping {path.name} is broken: {error}") from None


@cache
def load_all(folder: Path = MAPPINGS_DIR) -> dict[str, Mapping]:
    """Every mapping in the folder by name; raises MappingError for the first broken one."""
    mappings = {}
    for path in sorted(folder.glob("*.yaml")):
        mapping = load_file(path)
        if mapping.name in mappings:
            raise MappingError(f"mapping {path.name}: name {mapping.name!r} is used twice")
        mappings[mapping.name] = mapping
    if not mappings:
        raise MappingError(f"no mapping files in {folder}")
    return mappings
