"""Request headers that shape an answer, read alike for a single request and a Bundle entry:
`Prefer` (return=, handling=), the conditional read (If-None-Match, If-Modified-Since, which a
Bundle entry carries as request.ifNoneMatch and request.ifModifiedSince) and the precondition of
a write (If-Match, request.ifMatch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.store import Version

RETURNS = ("minimal", "representation", "OperationOutcome")


@dataclass(frozen=True, slots=True)
class Preference:
    """What a `Prefer` header asks (RFC 7240; FHIR http.html#ops)."""

    returns: str | None = None  # one of RETURNS; None when not asked (each answer has a default)
    lenient: bool = False  # handling=lenient
    respond_async: bool = False  # respond-async (Bulk Data kick-off)


def preference(header: str | None) -> Preference:
    """The one reading of `Prefer`: names and the handling value in any case, `return=` as
    FHIR spells its values."""
    asked: dict[str, str] = {}
    for chunk in (header or "").split(","):
        for part in chunk.split(";"):
            name, _, value = part.partition("=")
            asked.setdefault(name.strip().lower(), value.strip().strip('"'))
    returns = asked.get("return")
    return Preference(
        returns=returns if returns in RETURNS else None,
        lenient=asked.get("handling", "").lower() == "lenient",
        respond_async="respond-async" in asked,
    )


_ETAG = re.compile(r'^(?:W/)?"?(\d+)"?$')


@dataclass(frozen=True, slots=True)
class IfMatch:
    """The versions a write's `If-Match` accepts (RFC 9110 13.1.1): any of a list of tags, or
    with `*` whichever is current, as long as one is (a deletion leaves none)."""

    versions: frozenset[int] | None  # None: `*`

    def holds(self, current: Version | None) -> bool:
        if current is None:
            return False
        if self.versions is None:
            return not current.deleted
        return current.version_id in self.versions


def if_match(value: str, *, header: str = "If-Match") -> IfMatch:
    """`*` or a comma-separated list of version tags; 400 for anything else."""
    if value.strip() == "*":
        return IfMatch(None)
    versions = set()
    for tag in value.split(","):
        match = _ETAG.match(tag.strip())
        if not match:
            raise outcomes.bad_request(
                f'{header} {value!r} is not "*" or version tags like W/"3", W/"4"'
            )
        versions.add(int(match.group(1)))
    return IfMatch(frozenset(versions))


def not_modified(
    version: Version, *, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    """Whether a conditional read answers 304: If-None-Match decides when given."""
    if if_none_match is not None:
        tags = {t.strip() for t in if_none_match.split(",")}
        return version.etag in tags or f'"{version.version_id}"' in tags or "*" in tags
    moment = _moment(if_modified_since) if if_modified_since else None
    if moment is None:  # an unreadable date is ignored (RFC 9110 13.1.3)
        return False
    # An HTTP date counts whole seconds; an instant may be finer.
    stamp = version.last_updated
    return (stamp if moment.microsecond else stamp.replace(microsecond=0)) <= moment


def _moment(value: str) -> datetime | None:
    """An HTTP date (the header) or a FHIR instant (Bundle.entry.request.ifModifiedSince)."""
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
    if moment.tzinfo is None:  # "-0000": a time in UTC whose source zone is unknown
        moment = moment.replace(tzinfo=UTC)
    return moment
