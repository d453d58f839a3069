"""The search index: a table per parameter type, rows keyed by (resource_type, resource_id, param).

Rows exist only for the current version of resources that are not deleted; every write replaces
all rows of the resources it touches (see index.py). What the columns hold:

- string: `value` is the text normalized for matching (accents removed, case folded; see
  values.normalize), with the C collation on PostgreSQL so that a prefix is an index range;
  `raw` is the text as written, for `:exact`.
- token: `system` and `code`; `text` is the normalized display or CodeableConcept.text, for
  `:text`. Identifier types are rows of their own under `<param>:of-type` with code `type|value`,
  and Reference.identifier rows sit under `<param>:identifier`.
- date: `low` and `high` in microseconds since 1970-01-01T00:00Z, the half-open range [low, high)
  covered by the value at its precision (see dates.py).
- number, quantity: the value as a double; quantity adds `system`, `code` and `unit`.
- reference: `target_type` and `target_id` of a local reference; `url` for an absolute,
  canonical or otherwise external one.
- uri: the value as written.
- composite: one row per combination of component values, component n in `cN_system`, `cN_code`
  (token code, string, uri, reference id), `cN_value` (number, quantity) and `cN_low`/`cN_high`
  (date).
- resource_compartments: the Patient compartments a resource is in, from the official
  CompartmentDefinition (a Patient is in its own compartment).
"""

from sqlalchemy import BigInteger, Column, Float, Index, String, Table, Text

from vitasync_fhir.db import metadata
from vitasync_fhir.fhir.tables import ID_LENGTH, TYPE_LENGTH

PARAM_LENGTH = 64
TEXT_LENGTH = 200  # normalized strings are cut here; longer prefixes compare on the cut


def _sortable() -> String:
    """Text compared byte by byte, so that `value >= 'ab' AND value < 'ac'` is a prefix match."""
    return String(TEXT_LENGTH).with_variant(String(TEXT_LENGTH, collation="C"), "postgresql")


def _keys() -> list[Column]:
    return [
        Column("resource_type", String(TYPE_LENGTH), nullable=False),
        Column("resource_id", String(ID_LENGTH), nullable=False),
        Column("param", String(PARAM_LENGTH), nullable=False),
    ]


def _owner_index() -> Index:
    return Index(None, "resource_type", "resource_id", "param")


search_string = Table(
    "search_string",
    metadata,
    *_keys(),
    Column("value", _sortable(), nullable=False),
    Column("raw", Text, nullable=False),
    _owner_index(),
    Index(None, "resource_type", "param", "value"),
)

search_token = Table(
    "search_token",
    metadata,
    *_keys(),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("text", _sortable(), nullable=True),
    _owner_index(),
    Index(None, "resource_type", "param", "code", "system"),
)

search_date = Table(
    "search_date",
    metadata,
    *_keys(),
    Column("low", BigInteger, nullable=False),
    Column("high", BigInteger, nullable=False),
    _owner_index(),
    Index(None, "resource_type", "param", "low", "high"),
    Index(None, "resource_type", "param", "high"),
)

search_number = Table(
    "search_number",
    metadata,
    *_keys(),
    Column("value", Float, nullable=False),
    _owner_index(),
    Index(None, "resource_type", "param", "value"),
)

search_quantity = Table(
    "search_quantity",
    metadata,
    *_keys(),
    Column("value", Float, nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("unit", Text, nullable=True),
    _owner_index(),
    Index(None, "resource_type", "param", "value"),
)

search_reference = Table(
    "search_reference",
    metadata,
    *_keys(),
    Column("target_type", String(TYPE_LENGTH), nullable=True),
    Column("target_id", String(ID_LENGTH), nullable=True),
    Column("url", Text, nullable=True),
    _owner_index(),
    Index(None, "resource_type", "param", "target_id", "target_type"),
    Index(None, "target_type", "target_id"),
)

search_uri = Table(
    "search_uri",
    metadata,
    *_keys(),
    Column("value", Text, nullable=False),
    _owner_index(),
    Index(None, "resource_type", "param", "value"),
)


def _component(n: int) -> list[Column]:
    return [
        Column(f"c{n}_system", Text, nullable=True),
        Column(f"c{n}_code", Text, nullable=True),
        Column(f"c{n}_value", Float, nullable=True),
        Column(f"c{n}_low", BigInteger, nullable=True),
        Column(f"c{n}_high", BigInteger, nullable=True),
    ]


search_composite = Table(
    "search_composite",
    metadata,
    *_keys(),
    *_component(1),
    *_component(2),
    *_component(3),
    _owner_index(),
    Index(None, "resource_type", "param", "c1_code"),
)

resource_compartments = Table(
    "resource_compartments",
    metadata,
    Column("resource_type", String(TYPE_LENGTH), nullable=False),
    Column("resource_id", String(ID_LENGTH), nullable=False),
    Column("compartment_type", String(TYPE_LENGTH), nullable=False),
    Column("compartment_id", String(ID_LENGTH), nullable=False),
    Index(None, "resource_type", "resource_id"),
    Index(
        "ix_resource_compartments_compartment",
        "compartment_type",
        "compartment_id",
        "resource_type",
    ),
)

INDEX_TABLES = {
    "string": search_string,
    "token": search_token,
    "date": search_date,
    "number": search_number,
    "quantity": search_quantity,
    "reference": search_reference,
    "uri": search_uri,
    "composite": search_composite,
}
