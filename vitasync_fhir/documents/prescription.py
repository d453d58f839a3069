"""The resources a prescription shows, read as the caller, and the values the template prints.

Every read goes through `Resources` with the caller's Access: the role policy applies and each
read is audited. A `#id` reference is to a resource contained in the prescription itself. A
reference the caller may not follow, or that points nowhere, prints the reference's display text
instead of failing the whole document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson

from vitasync_fhir.auth import policy
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.service import Resources

_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})$")
_PARTIAL_DATE = re.compile(r"^[0-9]{4}(-[0-9]{2})?$")
NPI = "http://hl7.org/fhir/sid/us-npi"


@dataclass
class Sources:
    """The resources one prescription document is made of, with their versions."""

    request: dict
    patient: dict | None = None
    practitioner: dict | None = None
    role: dict | None = None
    organization: dict | None = None
    medication: dict | None = None
    versions: list[tuple[str, str, int]] = field(default_factory=list)


async def gather(resources: Resources, resource_id: str, *, action: str = "$print") -> Sources:
    """The prescription and what it refers to; `action` names the read in the audit trail."""
    found = await resources.read("MedicationRequest", resource_id, action=action)
    sources = Sources(orjson.loads(found.content or "{}"))
    sources.versions.append(("MedicationRequest", resource_id, found.version_id))
    request = sources.request
    sources.patient = await _follow(resources, sources, request.get("subject"), ("Patient",))
    requester = await _follow(
        resources, sources, request.get("requester"), ("Practitioner", "PractitionerRole")
    )
    if requester and requester["resourceType"] == "PractitionerRole":
        sources.role = requester
        sources.practitioner = await _follow(
            resources, sources, requester.get("practitioner"), ("Practitioner",)
        )
        sources.organization = await _follow(
            resources, sources, requester.get("organization"), ("Organization",)
        )
    else:
        sources.practitioner = requester
    sources.medication = await _follow(
        resources, sources, request.get("medicationReference"), ("Medication",)
    )
    return sources


async def _follow(
    resources: Resources, sources: Sources, reference: object, types: tuple[str, ...]
) -> dict | None:
    if not isinstance(reference, dict):
        return None
    target = str(reference.get("reference", ""))
    if target.startswith("#"):  # inside the prescription itself, already read as the caller
        return _contained(sources.request, target[1:], types)
    match = _REFERENCE.match(target)
    if match is None or match.group(1) not in types:
        return None
    kind, rid = match.groups()
    caller = resources.access.caller
    if caller is not None and not policy.allowed(caller, kind, "read"):
        return None  # not this role's to see: print the display text, record no denial
    try:
        found = await resources.read(kind, rid)
    except FhirError:
        return None
    sources.versions.append((kind, rid, found.version_id))
    return orjson.loads(found.content or "{}")


def _contained(request: dict, local_id: str, types: tuple[str, ...]) -> dict | None:
    for resource in request.get("contained") or []:
        if (
            isinstance(resource, dict)
            and resource.get("id") == local_id
            and resource.get("resourceType") in types
        ):
            return resource
    return None


# -- what the template prints -------------------------------------------------------------------


# A prescription is a page or two. Text written by outside systems is bounded before it is laid
# out: a megabyte of words kept the one renderer process of a worker busy for minutes.
MAX_TEXT = 1000  # characters of one printed value
MAX_ROWS = 20  # dosage instructions, and notes
SHORTENED = " … (shortened; the full text is in the record)"


def context(sources: Sources) -> dict:
    request = sources.request
    return _bounded(
        {
            "rx": _prescription(request, sources.medication),
            "patient": _patient(sources.patient, request.get("subject")),
            "prescriber": _prescriber(sources, request.get("requester")),
        }
    )


def _bounded(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + SHORTENED
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bounded(v) for v in value]
    return value


def prescription_number(resource_id: str) -> str:
    """The number printed on the prescription. A UUIDv7 begins with its millisecond: its first
    digits are the same for every prescription of a minute, so the number is its random end
    (48 bits, as 1A2B-3C4D-5E6F). Another server's id is printed as it is."""
    digits = resource_id.replace("-", "")
    if len(digits) == 32 and all(c in "0123456789abcdefABCDEF" for c in digits):
        tail = digits[-12:].upper()
        return f"{tail[:4]}-{tail[4:8]}-{tail[8:]}"
    return resource_id


def _prescription(request: dict, medication: dict | None) -> dict:
    supply = request.get("dispenseRequest") or {}
    notes = [n["text"] for n in request.get("note", []) if n.get("text")]
    dosages = request.get("dosageInstruction", [])
    if len(dosages) > MAX_ROWS:
        notes.insert(0, f"{len(dosages) - MAX_ROWS} more dosage instructions are in the record")
    if len(notes) > MAX_ROWS:
        notes[MAX_ROWS - 1 :] = [f"{len(notes) - MAX_ROWS + 1} more notes are in the record"]
    return {
        "id": request.get("id", ""),
        "number": prescription_number(request.get("id", "")),
        "status": request.get("status", ""),
        "intent": request.get("intent", ""),
        "date": _date(request.get("authoredOn")),
        "day": iso_day(request.get("authoredOn")),
        "medication": _medication(request, medication),
        "code": _code(request.get("medicationCodeableConcept") or (medication or {}).get("code")),
        "dosages": [_dosage(d) for d in dosages[:MAX_ROWS]],
        "quantity": _quantity(supply.get("quantity")),
        "refills": supply.get("numberOfRepeatsAllowed"),
        "supply_duration": _quantity(supply.get("expectedSupplyDuration")),
        "valid_until": _date((supply.get("validityPeriod") or {}).get("end")),
        "substitution": _substitution(request.get("substitution")),
        "notes": notes,
    }


def _medication(request: dict, medication: dict | None) -> str:
    concept = request.get("medicationCodeableConcept")
    if concept:
        return text_of(concept)
    if medication:
        return text_of(medication.get("code")) or "Medication"
    return (request.get("medicationReference") or {}).get("display", "Medication")


def _dosage(dosage: dict) -> dict:
    timing = dosage.get("timing") or {}
    repeat = timing.get("repeat") or {}
    dose = None
    for rate in dosage.get("doseAndRate", []):
        dose = _quantity(rate.get("doseQuantity")) or dose
    return {
        "text": dosage.get("text", ""),
        "dose": dose or "",
        "route": text_of(dosage.get("route")),
        "frequency": text_of(timing.get("code")) or _frequency(repeat),
        "duration": _quantity(repeat.get("boundsDuration")),
        "as_needed": dosage.get("asNeededBoolean") or bool(dosage.get("asNeededCodeableConcept")),
        "instruction": dosage.get("patientInstruction", ""),
    }


UNITS = {"s": "second", "min": "minute", "h": "hour", "d": "day", "wk": "week", "mo": "month"}


def _frequency(repeat: dict) -> str:
    times, period, unit = repeat.get("frequency"), repeat.get("period"), repeat.get("periodUnit")
    if not (times and period and unit):
        return ""
    word = UNITS.get(unit, unit)
    every = f"{word}" if period == 1 else f"{_number(period)} {word}s"
    count = {1: "once", 2: "twice", 3: "three times", 4: "four times"}.get(times, f"{times} times")
    return f"{count} every {every}" if period != 1 else f"{count} a {every}"


def _patient(patient: dict | None, reference: object) -> dict:
    if patient is None:
        return {"name": _display(reference), "family": ""}
    names = patient.get("name") or [{}]
    name = next((n for n in names if n.get("use") == "official"), names[0])
    return {
        "name": name_of(name),
        "family": name.get("family", ""),
        "birth_date": _date(patient.get("birthDate")),
        "gender": str(patient.get("gender", "")).capitalize(),
        "identifier": _identifier(patient.get("identifier", [])),
        "address": _address((patient.get("address") or [None])[0]),
        "phone": _telecom(patient.get("telecom", []), "phone"),
    }


def _prescriber(sources: Sources, reference: object) -> dict:
    practitioner, role, organization = sources.practitioner, sources.role, sources.organization
    if practitioner is None:
        found: dict = {"name": _display(reference) or _display((role or {}).get("practitioner"))}
    else:
        names = practitioner.get("name") or [{}]
        found = {
            "name": name_of(names[0]),
            "licence": _licence(practitioner),
            "phone": _telecom(practitioner.get("telecom", []), "phone"),
            "email": _telecom(practitioner.get("telecom", []), "email"),
        }
    if role:
        found["speciality"] = ", ".join(text_of(s) for s in role.get("specialty", []) if text_of(s))
        found["phone"] = found.get("phone") or _telecom(role.get("telecom", []), "phone")
    if organization:
        found["organization"] = organization.get("name", "")
        found["organization_address"] = _address((organization.get("address") or [None])[0])
    return found


def _licence(practitioner: dict) -> str:
    for qualification in practitioner.get("qualification", []):
        for identifier in qualification.get("identifier", []):
            if identifier.get("value"):
                return identifier["value"]
    for identifier in practitioner.get("identifier", []):
        if identifier.get("system") == NPI and identifier.get("value"):
            return f"NPI {identifier['value']}"
    return _identifier(practitioner.get("identifier", []))


# -- small formatters -----------------------------------------------------------------------------


def text_of(concept: object) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding", []):
        if coding.get("display"):
            return str(coding["display"])
    return ""


def _code(concept: object) -> str:
    for coding in (concept or {}).get("coding", []) if isinstance(concept, dict) else []:
        if coding.get("code"):
            system = str(coding.get("system", ""))
            label = "RxNorm" if "rxnorm" in system else ("SNOMED" if "snomed" in system else "")
            return f"{label} {coding['code']}".strip()
    return ""


def _display(reference: object) -> str:
    return str(reference.get("display", "")) if isinstance(reference, dict) else ""


def name_of(name: dict) -> str:
    if name.get("text"):
        return str(name["text"])
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
    return " ".join(str(p) for p in parts if p)


def _identifier(identifiers: list) -> str:
    ranked = sorted(
        (i for i in identifiers if i.get("value")),
        key=lambda i: 0 if text_of(i.get("type")) or (i.get("type") or {}).get("coding") else 1,
    )
    for identifier in ranked:
        label = text_of(identifier.get("type"))
        codes = [c.get("code") for c in (identifier.get("type") or {}).get("coding", [])]
        label = "MRN" if "MR" in codes else label
        return f"{label} {identifier['value']}".strip()
    return ""


def _address(address: dict | None) -> str:
    if not address:
        return ""
    if address.get("text"):
        return str(address["text"])
    city = " ".join(p for p in (address.get("postalCode"), address.get("city")) if p)
    parts = [*address.get("line", []), city, address.get("state"), address.get("country")]
    return ", ".join(str(p) for p in parts if p)


def _telecom(telecom: list, system: str) -> str:
    return next((t["value"] for t in telecom if t.get("system") == system and t.get("value")), "")


def _quantity(quantity: object) -> str:
    if not isinstance(quantity, dict) or quantity.get("value") is None:
        return ""
    unit = quantity.get("unit") or quantity.get("code") or ""
    return f"{_number(quantity['value'])} {unit}".strip()


def _number(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _substitution(substitution: object) -> str:
    if not isinstance(substitution, dict) or "allowedBoolean" not in substitution:
        return ""
    return "permitted" if substitution["allowedBoolean"] else "not permitted"


def _calendar_day(value: object) -> date | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:  # a partial date (2024, 2024-05), which FHIR allows
        return None


def _date(value: object) -> str:
    day = _calendar_day(value)
    if day is None:
        return value if isinstance(value, str) else ""
    return f"{day.day} {day:%b %Y}"


def iso_day(value: object) -> str:
    """A FHIR date or dateTime as YYYY-MM-DD, or the year (and month) it gives; else ""."""
    day = _calendar_day(value)
    if day is not None:
        return day.isoformat()
    return value if isinstance(value, str) and _PARTIAL_DATE.match(value) else ""
