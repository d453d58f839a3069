"""Repeat dispensing: how many fills a prescription allows, and refusing one more.

A MedicationRequest allows `dispenseRequest.numberOfRepeatsAllowed` + 1 fills (the first fill and
its repeats; no dispenseRequest: one fill), each of at most `dispenseRequest.quantity`, while
`dispenseRequest.validityPeriod` lasts (judged at the server's clock when the dispense is written).
A fill is a MedicationDispense with status `completed` whose `authorizingPrescription` names the
request; writing one (through /fhir, a bundle or /api fill) is checked here. The request must be
active. The last allowed fill completes the request in the same transaction.

Two pharmacies filling at once: the check locks the prescription (`Store.lock`) before it counts
the fills already recorded, so the second waits for the first to commit and then counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

import orjson

from vitasync_fhir.auth.policy import patient_of
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.search.dates import micros, period_range
from vitasync_fhir.fhir.search.service import match_ids
from vitasync_fhir.fhir.store import Version, Write

if TYPE_CHECKING:
    from vitasync_fhir.fhir.service import Resources

FILLED = "completed"  # the MedicationDispense status that uses up a fill
MAX_FILLS = 1000


@dataclass(frozen=True, slots=True)
class Allowance:
    """What one prescription allows, read from its dispenseRequest."""

    fills: int
    quantity: float | None
    valid: tuple[int, int] | None  # [low, high) in microseconds, as search dates are

    @classmethod
    def of(cls, request: dict) -> Allowance:
        dispense = request.get("dispenseRequest") or {}
        repeats = dispense.get("numberOfRepeatsAllowed")
        fills = 1 + (repeats if isinstance(repeats, int) and repeats > 0 else 0)
        value = (dispense.get("quantity") or {}).get("value")
        period = dispense.get("validityPeriod")
        return cls(
            fills=min(fills, MAX_FILLS),
            quantity=value if isinstance(value, int | float) else None,
            valid=period_range(period) if isinstance(period, dict) else None,
        )


def prescription_ids(dispense: dict) -> list[str]:
    """The ids of the MedicationRequests a dispense names (relative or absolute references)."""
    found = []
    for item in dispense.get("authorizingPrescription") or []:
        reference = item.get("reference") if isinstance(item, dict) else None
        if isinstance(reference, str) and "MedicationRequest/" in reference:
            rid = reference.rsplit("MedicationRequest/", 1)[1].split("/_history/")[0]
            if rid:
                found.append(rid)
    return found


def _filled(write: Write, prescription_id: str) -> bool:
    v = write.version
    return (
        v.resource_type == "MedicationDispense"
        and not v.deleted
        and (write.resource or {}).get("status") == FILLED
        and prescription_id in prescription_ids(write.resource or {})
    )


async def fills_used(resources: Resources, prescription_id: str, *, besides: str) -> list[str]:
    """Ids of the filled dispenses of a prescription already stored (`besides` left out)."""
    ids = await match_ids(
        resources.session,
        "MedicationDispense",
        f"prescription=MedicationRequest/{prescription_id}&status={FILLED}",
        limit=MAX_FILLS + 1,
    )
    return [i for i in ids if i != besides]


async def check_fill(resources: Resources, write: Write, writes: Sequence[Write]) -> list[Write]:
    """409 when this dispense would be one fill too many, too much, too early or too late."""
    dispense = write.resource
    if dispense is None or dispense.get("status") != FILLED:
        return []
    if write.replaces is not None:
        previous = await resources.store.current("MedicationDispense", write.version.id)
        if previous and not previous.deleted and _status(previous) == FILLED:
            return []  # already counted when it was filled
    caused: list[Write] = []
    for prescription_id in prescription_ids(dispense):
        caused += await _check_one(resources, write, writes, prescription_id)
    return caused


async def _check_one(
    resources: Resources, write: Write, writes: Sequence[Write], prescription_id: str
) -> list[Write]:
    request_version = await resources.store.lock("MedicationRequest", prescription_id)
    if request_version is None or request_version.deleted or request_version.content is None:
        _unknown(prescription_id)
    access = resources.access
    if not access.may_see("MedicationRequest", request_version.content, "read"):
        # Another patient's prescription (a patient-limited token): as unknown as a missing
        # one, so that neither its status, its allowance nor its existence leaks, and untouched.
        await access.record_denial("MedicationRequest", "read", prescription_id)
        _unknown(prescription_id)
    request = orjson.loads(request_version.content)
    _check_patient(request, write.resource or {}, prescription_id, access.base)
    status = request.get("status")
    if status != "active":
        word = "already filled" if status == FILLED else f"{status}, not active"
        _refuse(f"MedicationRequest/{prescription_id} is {word}")
    _check_order(request, prescription_id)
    allowance = Allowance.of(request)
    _check_validity(allowance, prescription_id)
    _check_quantity(allowance, write.resource or {}, prescription_id)
    stored = await fills_used(resources, prescription_id, besides=write.version.id)
    earlier = [
        w
        for w in writes[: writes.index(write)]
        if _filled(w, prescription_id) and w.version.id not in stored
    ]
    used = len(stored) + len(earlier)
    if used >= allowance.fills:
        _refuse(
            f"MedicationRequest/{prescription_id} allows {allowance.fills} fill(s) "
            f"and all have been dispensed"
        )
    if used + 1 < allowance.fills or _written_too(writes, prescription_id):
        return []
    return [_completed(resources, request_version, request)]


def _unknown(prescription_id: str) -> NoReturn:
    raise FhirError(
        422,
        "processing",
        f"authorizingPrescription MedicationRequest/{prescription_id} is not known",
        expression="MedicationDispense.authorizingPrescription",
    )


def _check_patient(request: dict, dispense: dict, prescription_id: str, base: str) -> None:
    """422 when the dispense is for another patient than the prescription's: a fill of one
    patient's prescription must not be handed to (and use up the fills for) someone else."""
    prescribed, dispensed = (
        patient_of(request.get("subject"), base=base),
        patient_of(dispense.get("subject"), base=base),
    )
    if prescribed and dispensed and prescribed != dispensed:
        raise FhirError(
            422,
            "processing",
            f"MedicationRequest/{prescription_id} is for another patient than Patient/{dispensed}",
            expression="MedicationDispense.subject",
        )


# The intents that authorize a dispense (R4 medicationrequest-intent): a proposal, a plan or an
# option is not an order to fill.
ORDERS = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order"})


def _check_order(request: dict, prescription_id: str) -> None:
    """Only an order to give the medication is filled: not one that says not to give it
    (doNotPerform), nor a proposal or plan."""
    if request.get("doNotPerform") is True:
        _refuse(f"MedicationRequest/{prescription_id} is an order NOT to give this medication")
    if request.get("intent") not in ORDERS:
        _refuse(
            f"MedicationRequest/{prescription_id} is a {request.get('intent')}, not an order "
            "to dispense"
        )


def _check_validity(allowance: Allowance, prescription_id: str) -> None:
    if allowance.valid is None:
        return
    low, high = allowance.valid
    moment = micros(datetime.now(UTC))
    if moment >= high:
        _refuse(f"MedicationRequest/{prescription_id} expired (its validityPeriod has ended)")
    if moment < low:
        _refuse(f"MedicationRequest/{prescription_id} is not valid yet (validityPeriod start)")


def _check_quantity(allowance: Allowance, dispense: dict, prescription_id: str) -> None:
    value = (dispense.get("quantity") or {}).get("value")
    if isinstance(value, int | float) and value <= 0:  # a fill hands something out
        _refuse(
            f"A fill of MedicationRequest/{prescription_id} dispenses more than 0, not {value:g}"
        )
    if allowance.quantity is None or not isinstance(value, int | float):
        return
    if value > allowance.quantity:
        _refuse(
            f"A fill of MedicationRequest/{prescription_id} is at most {allowance.quantity:g}, "
            f"not {value:g}"
        )


def _written_too(writes: Sequence[Write], prescription_id: str) -> bool:
    """Whether this save also writes the prescription itself (a transaction completing it)."""
    return any(
        w.version.resource_type == "MedicationRequest" and w.version.id == prescription_id
        for w in writes
    )


def _completed(resources: Resources, current: Version, request: dict) -> Write:
    """The last fill's consequence: the prescription, completed."""
    write = resources.plan_update(
        current, "MedicationRequest", current.id, {**request, "status": "completed"}
    )
    assert write is not None  # the status changes, so the content does
    return write


def _status(version: Version) -> str | None:
    return orjson.loads(version.content).get("status") if version.content else None


def _refuse(message: str) -> NoReturn:
    raise FhirError(409, "business-rule", message)
