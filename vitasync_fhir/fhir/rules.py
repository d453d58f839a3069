"""Write rules per resource type: domain checks that every write path obeys, from one place.

`Resources.save` is where every write lands (single interactions, batch and transaction entries,
conditional writes, the /api routes), so it asks this module twice, inside the write's database
transaction: `before_store` runs the rules of each written type (a rule may refuse the write with a
FhirError, or add the writes the change causes: the last fill completes its prescription), and
`after_store` runs the observers of every write once its index rows exist (subscriptions match
there). Adding a rule is a line in `RULES`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING

from vitasync_fhir.fhir.store import Write

if TYPE_CHECKING:
    from vitasync_fhir.fhir.service import Resources

# (the caller's Resources, the write, every write of this save) -> further writes it causes
Rule = Callable[["Resources", Write, Sequence[Write]], Awaitable[list[Write]]]
Observer = Callable[["Resources", Sequence[Write]], Awaitable[None]]


@cache
def registry() -> tuple[dict[str, tuple[Rule, ...]], tuple[Observer, ...]]:
    # Imported late: the rules use the FHIR service, which imports this module.
    from vitasync_fhir.pharmacy import dispensing, lifecycle
    from vitasync_fhir.subscriptions import events, registration

    rules: dict[str, tuple[Rule, ...]] = {
        "MedicationRequest": (lifecycle.check_transition,),
        "MedicationDispense": (dispensing.check_fill,),
        "Subscription": (registration.check_subscription,),
    }
    observers: tuple[Observer, ...] = (events.record_matches,)
    return rules, observers


async def before_store(resources: Resources, writes: Sequence[Write]) -> list[Write]:
    """The writes to store: these, checked, plus whatever they cause (checked in turn)."""
    rules, _ = registry()
    result = list(writes)
    index = 0
    while index < len(result):  # caused writes are appended and checked like the others
        write = result[index]
        for rule in rules.get(write.version.resource_type, ()):
            result.extend(await rule(resources, write, result))
        index += 1
    return result


async def after_store(resources: Resources, writes: Sequence[Write]) -> None:
    _, observers = registry()
    for observer in observers:
        await observer(resources, writes)
