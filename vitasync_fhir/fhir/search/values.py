"""FHIR values turned into index values, one function per parameter type.

Each function takes what a walker found, `(value, type)` with `type` the FHIR type code ("" when
fhirpathpy evaluated the expression and the type is read from the value's shape), and returns
tuples in the column order of its table in tables.py, without the key columns.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from vitasync_fhir.fhir.search.dates import parse_range, period_range, timing_range
from vitasync_fhir.fhir.search.tables import TEXT_LENGTH

_TEXT_TYPES = frozenset(
    {
        "string",
        "markdown",
        "code",
        "id",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "xhtml",
        "base64Binary",
    }
)
_CODE_TYPES = frozenset({"code", "string", "id", "uri", "url", "canonical", "oid", "uuid"})
_NUMBER_TYPES = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
_QUANTITY_TYPES = frozenset(
    {"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"}
)
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})
_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
CURRENCY_SYSTEM = "urn:iso:std:iso:4217"


def normalize(text: str) -> str:
    """Accents removed and case folded, cut to the indexed length: the form strings match in."""
    if text.isascii():
        return text.lower()[:TEXT_LENGTH]
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold()[:TEXT_LENGTH]


# -- string -------------------------------------------------------------------------------------


def strings(value: Any, type_code: str) -> list[str]:
    """The texts a string parameter matches: a string itself, or the parts of a name or address."""
    if isinstance(value, str):
        return [value] if type_code in _TEXT_TYPES or not type_code else []
    if not isinstance(value, dict):
        return []
    if type_code == "HumanName" or (not type_code and ("family" in value or "given" in value)):
        parts = _NAME_PARTS
    elif type_code == "Address" or (not type_code and ("city" in value or "line" in value)):
        parts = _ADDRESS_PARTS
    else:
        return []
    out = []
    for part in parts:
        item = value.get(part)
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            out.extend(i for i in item if isinstance(i, str))
    return out


def string_rows(value: Any, type_code: str) -> list[tuple[str, str]]:
    return [(normalize(s), s) for s in strings(value, type_code) if s]


# -- token --------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return normalize(value) if isinstance(value, str) and value else None


def _coding_row(coding: Any) -> tuple[str | None, str | None, str | None] | None:
    if not isinstance(coding, dict):
        return None
    code, system = coding.get("code"), coding.get("system")
    display = _text(coding.get("display"))
    if code is None and system is None and display is None:
        return None
    return system, code, display


def token_rows(value: Any, type_code: str) -> tuple[list[tuple], list[tuple]]:
    """([(system, code, text)], [(type system, "type-code|value", None)] for `:of-type`)."""
    if not type_code:
        type_code = _token_shape(value)
    if type_code == "CodeableConcept":
        rows = [r for c in value.get("coding") or () if (r := _coding_row(c))]
        text = _text(value.get("text"))
        if text:
            rows.append((None, None, text))
        return rows, []
    if type_code == "Coding":
        row = _coding_row(value)
        return ([row] if row else []), []
    if type_code == "Identifier":
        return _identifier_rows(value)
    if type_code == "ContactPoint":
        contact = value.get("value")
        return ([(None, contact, None)] if isinstance(contact, str) else []), []
    if type_code == "boolean" and isinstance(value, bool):
        return [(None, "true" if value else "false", None)], []
    if type_code in _CODE_TYPES and isinstance(value, str):
        return [(None, value, None)], []
    return [], []


def _identifier_rows(value: dict) -> tuple[list[tuple], list[tuple]]:
    identifier = value.get("value")
    kind = value.get("type") if isinstance(value.get("type"), dict) else {}
    text = _text(kind.get("text"))
    if not isinstance(identifier, str):
        return ([(value.get("system"), None, text)] if text or value.get("system") else []), []
    of_type = [
        (c.get("system"), f"{c.get('code')}|{identifier}", None)
        for c in kind.get("coding") or ()
        if isinstance(c, dict) and c.get("code")
    ]
    return [(value.get("system"), identifier, text)], of_type


def _token_shape(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "code"
    if not isinstance(value, dict):
        return ""
    if "coding" in value or ("text" in value and len(value) == 1):
        return "CodeableConcept"
    if "code" in value:
        return "Coding"
    if "value" in value:
        return "Identifier"
    return ""


# -- date, number, quantity -----------------------------------------------------------------------


def date_rows(value: Any, type_code: str) -> list[tuple[int, int]]:
    found = None
    if isinstance(value, str):
        if type_code in _DATE_TYPES or not type_code:
            found = parse_range(value)
    elif isinstance(value, dict):
        if type_code == "Period" or (not type_code and ("start" in value or "end" in value)):
            found = period_range(value)
        elif type_code == "Timing" or (not type_code and ("event" in value or "repeat" in value)):
            found = timing_range(value)
    return [found] if found else []


def number_rows(value: Any, type_code: str) -> list[tuple[float]]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return []
    if type_code and type_code not in _NUMBER_TYPES:
        return []
    return [(float(value),)]


def quantity_rows(value: Any, type_code: str) -> list[tuple]:
    """(value, system, code, unit) of a Quantity (or Age, Duration, ...) or of Money."""
    if not isinstance(value, dict):
        return []
    number = value.get("value")
    if isinstance(number, bool) or not isinstance(number, int | float):
        return []
    if type_code == "Money" or (not type_code and "currency" in value):
        return [(float(number), CURRENCY_SYSTEM, value.get("currency"), value.get("currency"))]
    if type_code and type_code not in _QUANTITY_TYPES:
        return []
    return [(float(number), value.get("system"), value.get("code"), value.get("unit"))]


# -- reference, uri -------------------------------------------------------------------------------


def local_reference(reference: str, base: str) -> str:
    """`reference` without the server's FHIR `base` (settings.fhir_base) when it starts with it:
    `<base>/Patient/1` is the same reference as `Patient/1` (R4 search, reference). The one place
    that decides what an absolute reference to this server is."""
    if base and reference.startswith(base) and reference[len(base) : len(base) + 1] == "/":
        return reference[len(base) + 1 :]
    return reference


def parse_reference(reference: str, base: str = "") -> tuple[str | None, str | None, str | None]:
    """(target type, target id, url): a relative `Type/id` is local, and so is one written with
    this server's FHIR `base`; anything else is a url."""
    if reference.startswith("#"):
        return None, None, None
    local = local_reference(reference, base) if "://" in reference else reference
    if "://" in local or local.startswith("urn:"):
        return None, None, reference
    parts = local.split("/_history/", 1)[0].split("/")
    if len(parts) == 2 and parts[0][:1].isupper() and parts[1]:
        return parts[0], parts[1], None
    return None, None, reference


def reference_rows(value: Any, type_code: str, base: str = "") -> tuple[list[tuple], list[tuple]]:
    """([(target type, target id, url)], [(system, value, None)] of Reference.identifier);
    `base` is the server's FHIR base, which references may be written with. A reference to a
    contained resource (`#p1`) matches no search value, but its row (url "#p1") tells
    `:missing` that the reference is there; a search value never parses to such a url."""
    if isinstance(value, str):
        return [(None, None, value)], []
    if not isinstance(value, dict):
        return [], []
    rows = []
    reference = value.get("reference")
    if isinstance(reference, str):
        target_type, target_id, url = parse_reference(reference, base)
        if target_id or url:
            rows.append((target_type, target_id, url))
        elif reference.startswith("#"):
            rows.append((None, None, reference))
    identifiers = []
    identifier = value.get("identifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        identifiers.append((identifier.get("system"), identifier["value"], None))
    return rows, identifiers


def uri_rows(value: Any, type_code: str) -> list[tuple[str]]:
    return [(value,)] if isinstance(value, str) and value else []
