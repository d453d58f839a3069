"""The MedicationRequest status lifecycle, enforced on every write (see fhir/rules.py).

A new prescription may start in any status (records imported from elsewhere arrive completed or
stopped). After that its status moves only along TRANSITIONS; any other change answers 409 and
leaves the prescription as it was. Writing the same status again (editing other elements) is always
allowed. Every accepted change is a new version in the history, as every write is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import orjson

from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.store import Write

if TYPE_CHECKING:
    from vitasync_fhir.fhir.service import Resources

# from-status -> the statuses it may move to (R4 value set medicationrequest-status).
# entered-in-error is reachable from every status (a record made by mistake); it is final.
# unknown (the sender did not know) may be resolved to any status.
TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"active", "cancelled", "entered-in-error"}),
    "active": frozenset({"completed", "cancelled", "stopped", "on-hold", "entered-in-error"}),
    "on-hold": frozenset({"active", "cancelled", "stopped", "entered-in-error"}),
    "completed": frozenset({"entered-in-error"}),
    "cancelled": frozenset({"entered-in-error"}),
    "stopped": frozenset({"entered-in-error"}),
    "entered-in-error": frozenset(),
    "unknown": frozenset(
        {"draft", "active", "on-hold", "completed", "cancelled", "stopped", "entered-in-error"}
    ),
}


def allowed(old: str | None, new: str | None) -> bool:
    if old is None or old == new:
        return True
    return new in TRANSITIONS.get(old, frozenset())


def status_of(content: str | None) -> str | None:
    if content is None:
        return None
    status = orjson.loads(content).get("status")
    return status if isinstance(status, str) else None


async def check_transition(
    resources: Resources, write: Write, writes: Sequence[Write]
) -> list[Write]:
    """409 unless the write keeps the status or moves it along TRANSITIONS."""
    version = write.version
    if write.replaces is None or version.deleted:
        return []  # a new prescription, or a deletion: no transition
    # Locked: a fill or another status change of this prescription waits for this transaction.
    current = await resources.store.lock(version.resource_type, version.id)
    if current is None or current.deleted:
        return []
    old, new = status_of(current.content), status_of(version.content)
    if not allowed(old, new):
        choices = ", ".join(sorted(TRANSITIONS.get(old or "", ()))) or "none"
        raise FhirError(
            409,
            "business-rule",
            f"A {old} prescription cannot become {new} (allowed: {choices})",
        )
    return []
