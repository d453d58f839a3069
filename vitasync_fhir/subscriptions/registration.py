"""Checking a Subscription a client writes (the write rule of fhir/rules.py).

Supported: channel.type rest-hook to an http(s) endpoint (on the public internet unless
`subscription_allow_private`; see endpoints.py), channel.header lines that do not frame the
request, criteria `Type?search` (any search this server understands, checked now so a typo
answers 400 at once), payload `application/fhir+json` (or `application/json`) or none. A client
writes status `requested` (the server then shakes hands and makes it `active` or `error`) or
`off`; `active` and `error` are the server's to set. The caller must be allowed to search the
criteria's type: they will only ever hear of what their own access lets them read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from vitasync_fhir import config
from vitasync_fhir.fhir.models import is_resource_type
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.search.service import match_ids
from vitasync_fhir.fhir.store import Write
from vitasync_fhir.subscriptions.endpoints import endpoint_error, header_error
from vitasync_fhir.subscriptions.tables import OFF, REQUESTED

if TYPE_CHECKING:
    from vitasync_fhir.fhir.service import Resources

PAYLOADS = ("application/fhir+json", "application/json")
CLIENT_STATUSES = (REQUESTED, OFF)


def split_criteria(criteria: str) -> tuple[str, str]:
    """(resource type, search query) of `Type?query`."""
    resource_type, _, query = criteria.strip().partition("?")
    return resource_type, query


def _invalid(message: str, expression: str) -> FhirError:
    return FhirError(422, "invalid", message, expression=f"Subscription.{expression}")


async def check_subscription(
    resources: Resources, write: Write, writes: Sequence[Write]
) -> list[Write]:
    subscription = write.resource
    if subscription is None or resources.access.is_system:
        return []  # deletions, and the server's own status changes
    channel = subscription.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise FhirError(
            422, "not-supported", "Only rest-hook subscriptions are supported",
            expression="Subscription.channel.type",
        )  # fmt: skip
    settings = resources.session.info.get("settings")
    if not isinstance(settings, config.Settings):
        settings = config.settings
    problem = endpoint_error(
        channel.get("endpoint"), allow_private=settings.subscription_allow_private
    )
    if problem:
        raise _invalid(problem, "channel.endpoint")
    problem = header_error(channel.get("header"))
    if problem:
        raise _invalid(problem, "channel.header")
    payload = channel.get("payload")
    if payload is not None and payload not in PAYLOADS:
        raise _invalid(
            f"channel.payload must be one of {', '.join(PAYLOADS)} or absent", "channel.payload"
        )
    if subscription.get("status") not in CLIENT_STATUSES:
        raise _invalid(
            "status must be requested (or off); the server sets active and error", "status"
        )
    resource_type, query = split_criteria(str(subscription.get("criteria", "")))
    if not is_resource_type(resource_type):
        raise FhirError(
            400, "invalid", f"criteria must start with a resource type, not {resource_type!r}",
            expression="Subscription.criteria",
        )  # fmt: skip
    await resources.access.require(resource_type, "search")
    # Parses the criteria as a search would: unknown or malformed parameters answer 400 now.
    await match_ids(resources.session, resource_type, with_id(query, "-"), limit=1)
    return []


def with_id(query: str, resource_id: str) -> str:
    return f"{query}&_id={resource_id}" if query else f"_id={resource_id}"
