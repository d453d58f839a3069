"""History Bundles for an instance, a type or the whole system, keyset-paged."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import Access
from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.responses import bundle, bundle_entry
from vitasync_fhir.fhir.search.dates import from_micros
from vitasync_fhir.fhir.search.params import Skip, parse_date
from vitasync_fhir.fhir.service import instant
from vitasync_fhir.fhir.store import Store, Version

_METHOD_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}
_KNOWN = {"_count", "_since", "_at", "_cursor", "_total", "_format", "_pretty"}


_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})")


def _since(request: Request) -> datetime | None:
    value = request.query_params.get("_since")
    if value is None:
        return None
    if not _INSTANT.fullmatch(value):
        raise outcomes.bad_request(
            f"_since {value!r} is not an instant (e.g. 2024-05-01T09:30:00Z)", expression="_since"
        )
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.astimezone(UTC)  # the stored times are UTC (SQLite compares their text)
    except (ValueError, OverflowError):
        raise outcomes.bad_request(
            f"_since {value!r} is no UTC instant", expression="_since"
        ) from None


# _at's prefix -> the period it names, from the value's own [low, high): None is open.
_AT_PERIOD = {
    "eq": lambda low, high: (low, high),
    "ge": lambda low, high: (low, None),
    "gt": lambda low, high: (high, None),
    "le": lambda low, high: (None, high),
    "lt": lambda low, high: (None, low),
}


def _at(request: Request) -> tuple[datetime | None, datetime | None] | None:
    """The period of `_at`: versions current at some moment of it are listed."""
    value = request.query_params.get("_at")
    if value is None:
        return None
    try:
        parsed = parse_date("_at", value)
    except Skip as error:
        raise outcomes.bad_request(error.message, expression="_at") from None
    period = _AT_PERIOD.get(parsed.prefix)
    if period is None:
        raise outcomes.bad_request(
            f"_at takes no prefix {parsed.prefix}; one of {', '.join(_AT_PERIOD)}", expression="_at"
        )
    low, high = period(parsed.low, parsed.high)
    return (
        from_micros(low) if low is not None else None,
        from_micros(high) if high is not None else None,
    )


def _int_param(request: Request, name: str, default: int, *, maximum: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):
        raise outcomes.bad_request(f"{name} must be a whole number, not {value!r}", expression=name)
    return min(int(value), maximum)


def _entry(base: str, version: Version, before: Version | None) -> str:
    url = f"{version.resource_type}/{version.id}"
    method = version.method or "PUT"
    made = method == "POST" or (method == "PUT" and (before is None or before.deleted))
    return bundle_entry(
        full_url=f"{base}/{url}",
        resource=version.content,
        request={"method": method, "url": url if method != "POST" else version.resource_type},
        response={
            "status": "201 Created" if made else _METHOD_STATUS.get(method, "200 OK"),
            "etag": version.etag,
            "lastModified": instant(version.last_updated),  # a FHIR instant
        },
    )


def _visible(access: Access, version: Version, before: Version | None) -> bool:
    """Each version is shown only to whom its own content is visible (a resource may have moved
    between patients); a deletion, which has none, to whom the version it deleted was."""
    if not version.deleted:
        return access.may_see(version.resource_type, version.content)
    return before is not None and access.may_see(before.resource_type, before.content)


def _patients_shown(
    access: Access, resource_type: str | None, shown: list[tuple[Version, Version | None]]
) -> list[tuple[str, str]]:
    """The patients whose records the page showed (a deletion: the version it deleted), for the
    AuditEvent, as a search names them."""
    if not access.audits(resource_type):
        return []
    contents = ((v if not v.deleted else before) for v, before in shown)
    return access.patients_shown(
        (c.resource_type, orjson.loads(c.content)) for c in contents if c and c.content
    )


async def page(
    request: Request,
    session: AsyncSession,
    access: Access,
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
) -> str:
    """One page of a history Bundle as JSON text."""
    unknown = sorted(set(request.query_params) - _KNOWN)
    if unknown:
        raise outcomes.bad_request(f"Unknown history parameter(s): {', '.join(unknown)}")
    settings = request.app.state.settings
    count = _int_param(
        request, "_count", settings.history_page_size, maximum=settings.max_page_size
    )
    cursor_text = request.query_params.get("_cursor")
    cursor = _int_param(request, "_cursor", 0, maximum=2**62) if cursor_text else None
    since = _since(request)
    at = _at(request)
    restrict = None
    types = (resource_type,) if resource_type else tuple(sorted(resource_types()))
    if resource_id is None:  # an instance was checked when it was read
        if resource_type is not None:
            await access.require(resource_type, "history-type")
        restrict = access.restriction("history-type")
        restrict = restrict and (lambda table, _r=restrict, _t=types: _r(table, _t))
    store = Store(session)
    rows = await store.history(
        resource_type=resource_type,
        resource_id=resource_id,
        since=since,
        at=at,
        before_seq=cursor,
        limit=count + 1,
        restrict=restrict,
    )
    more = len(rows) > count
    rows = rows[:count]
    # The filter above keeps resources by their current compartment (and deleted ones, which
    # have none); `_visible` then judges each version. A caller who sees a patient's part of
    # these types gets no total: counting what is hidden from them would tell how much there is.
    limited = access.limited(types, "history")
    before = await store.previous([v for _, v in rows])
    shown = [
        (v, before.get((v.resource_type, v.id, v.version_id)))
        for _, v in rows
        if not limited or _visible(access, v, before.get((v.resource_type, v.id, v.version_id)))
    ]
    if resource_id is None:  # an instance's history was audited when it was read
        await access.audited(
            session,
            "history-type" if resource_type else "history-system",
            resource_type,
            query=request.url.query or None,
            more=_patients_shown(access, resource_type, shown),
        )
    total = None
    if request.query_params.get("_total") == "accurate" and not limited:
        total = await store.history_count(
            resource_type=resource_type,
            resource_id=resource_id,
            since=since,
            at=at,
            restrict=restrict,
        )
    base = settings.fhir_base
    path = "/".join(p for p in (resource_type, resource_id) if p)
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "_cursor"]
    self_url = f"{base}/{path + '/' if path else ''}_history"
    links = [
        (
            "self",
            self_url
            + ("?" + urlencode(request.query_params.multi_items()) if request.url.query else ""),
        )
    ]
    if more and rows:
        links.append(("next", self_url + "?" + urlencode([*kept, ("_cursor", str(rows[-1][0]))])))
    return bundle(
        bundle_type="history",
        total=total,
        links=links,
        entries=(_entry(base, version, prior) for version, prior in shown),
    )
