"""History Bundles for an instance, a type or the whole system, keyset-paged.

A page holds only versions the caller may see, and its `next` link depends only on whether a
further such version exists: an empty page with a `next` link would tell a patient that another
patient's record was deleted, and `_since` when. The cursor is the global write sequence,
encrypted, so that it does not count the server's writes either.
"""

from __future__ import annotations

import base64
import hmac
import re
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import orjson
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import keys
from vitasync_fhir.auth.access import Access
from vitasync_fhir.config import Settings
from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.responses import bundle, bundle_entry
from vitasync_fhir.fhir.search.dates import from_micros
from vitasync_fhir.fhir.search.params import Skip, parse_date
from vitasync_fhir.fhir.service import instant
from vitasync_fhir.fhir.store import Store, Version

_METHOD_STATUS = {"POST": "201 Created", "PUT": "200 OK", "DELETE": "204 No Content"}
_KNOWN = {"_count", "_since", "_at", "_cursor", "_total", "_format", "_pretty"}
# A limited caller's page reads past the versions hidden from them in batches (of at most _BATCH)
# until it is full; after HIDDEN_SCAN versions more than the page holds it ends and links on.
HIDDEN_SCAN = 1000
_BATCH = 500
Shown = list[tuple[Version, Version | None]]  # a version and the one before it


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


_CURSOR = re.compile(r"[A-Za-z0-9_-]{22}")  # 16 bytes, base64url
_ciphers: dict[Path, Cipher] = {}


def _cipher(settings: Settings) -> Cipher:
    """AES with a key derived from the token signing key: every worker has it, no caller does."""
    path = keys.key_path(settings).resolve()
    cipher = _ciphers.get(path)
    if cipher is None:
        pem = keys.signing_key(settings).as_pem(private=True)
        secret = hmac.digest(pem, b"vitasync history cursor", "sha256")[:16]
        cipher = _ciphers[path] = Cipher(algorithms.AES(secret), modes.ECB())
    return cipher


def _cursor_text(settings: Settings, seq: int) -> str:
    """The write sequence as a cursor: one AES block of it and eight zero bytes, which tell a
    cursor of ours from one changed or made up."""
    encryptor = _cipher(settings).encryptor()
    block = encryptor.update(seq.to_bytes(8, "big") + bytes(8)) + encryptor.finalize()
    return base64.urlsafe_b64encode(block).decode().rstrip("=")


def _cursor_seq(settings: Settings, text: str) -> int:
    if _CURSOR.fullmatch(text):
        decryptor = _cipher(settings).decryptor()
        block = decryptor.update(base64.urlsafe_b64decode(text + "==")) + decryptor.finalize()
        if block[8:] == bytes(8):
            return int.from_bytes(block[:8], "big")
    raise outcomes.bad_request(
        "_cursor is not a cursor of this server's history: follow the Bundle's links",
        expression="_cursor",
    )


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


async def _versions(
    store: Store,
    access: Access,
    *,
    limited: bool,
    count: int,
    after: int | None,
    query: dict,
) -> tuple[Shown, int | None]:
    """The page's versions and the sequence the next page starts below (None: no next page).

    One query when nothing is hidden. A limited caller's SQL filter lets through every deleted
    resource (it has left the compartments) and versions from before a resource moved between
    patients; `_visible` judges those, and further batches are read until the page is full and
    one more visible version is found, or the rows run out. Past HIDDEN_SCAN versions beyond the
    page's count, the page links on from the last version read: that such a page is not full
    says only that at least HIDDEN_SCAN hidden versions lie in its range.
    """
    shown: Shown = []
    last, limit, scanned = None, count + 1, 0
    while count:
        rows = await store.history(**query, before_seq=after, limit=limit)
        before = await store.previous([v for _, v in rows])
        for seq, version in rows:
            prior = before.get((version.resource_type, version.id, version.version_id))
            if limited and not _visible(access, version, prior):
                continue
            if len(shown) == count:
                return shown, last
            shown.append((version, prior))
            last = seq
        scanned += len(rows)
        if len(rows) < limit:
            break
        after = rows[-1][0]
        if scanned >= count + HIDDEN_SCAN:
            return shown, after
        # Where one version was hidden more usually are (a patient's view of a type's history
        # past other patients' deletions): larger batches, each a query that sets up its filter.
        limit = min(max(limit * 4, 100), _BATCH, count + HIDDEN_SCAN - scanned)
    return shown, None


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
    cursor = _cursor_seq(settings, cursor_text) if cursor_text else None
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
    # The filter above keeps resources by their current compartment (and deleted ones, which
    # have none); `_visible` then judges each version. A caller who sees a patient's part of
    # these types gets no total: counting what is hidden from them would tell how much there is.
    limited = access.limited(types, "history")
    query = {
        "resource_type": resource_type,
        "resource_id": resource_id,
        "since": since,
        "at": at,
        "restrict": restrict,
    }
    shown, after = await _versions(
        store, access, limited=limited, count=count, after=cursor, query=query
    )
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
        total = await store.history_count(**query)
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
    if after is not None:
        cursor_text = _cursor_text(settings, after)
        links.append(("next", self_url + "?" + urlencode([*kept, ("_cursor", cursor_text)])))
    return bundle(
        bundle_type="history",
        total=total,
        links=links,
        entries=(_entry(base, version, prior) for version, prior in shown),
    )
