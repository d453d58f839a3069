"""Dates as ranges: every FHIR date, dateTime or instant covers [low, high) at its precision.

`2019` covers the whole year, `2019-03` the month, `2019-03-04T10:00:00Z` one second,
`2019-03-04T10:00:00.250Z` one millisecond. Bounds are integers, microseconds since
1970-01-01T00:00:00Z, so that the index compares plain numbers on SQLite and PostgreSQL alike.

Time zones: a value with a time and no zone, stored or searched, is read as UTC. A date without a
time (`2019-03-04`) is the UTC day as well: we do not guess the zone of the server or the client, so
the same query gives the same answer wherever it runs. (FHIR leaves this to the server; some servers
use their local zone, which makes results change with the deployment.)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN = -62135596800000000  # 0001-01-01T00:00:00Z
MAX = 253402300800000000  # 10000-01-01T00:00:00Z, the end of 9999
_US = timedelta(microseconds=1)

_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch for an aware datetime."""
    return (moment - EPOCH) // _US


def from_micros(value: int) -> datetime:
    """The moment of `value`, held within what a datetime can be (year 1 to the end of 9999):
    the bound just past 9999-12-31T23:59:59.999999 compares as that last microsecond."""
    return EPOCH + timedelta(microseconds=min(max(value, MIN), MAX - 1))


def parse_range(text: str) -> tuple[int, int] | None:
    """[low, high) of a FHIR date, dateTime or instant (or a search value); None if malformed."""
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction, zone = match.groups()
    try:
        year = int(year_s)
        if month_s is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            high = datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else None
            return micros(low), micros(high) if high else MAX
        month = int(month_s)
        if day_s is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            high = (
                datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
                if year < 9999 or month < 12
                else None
            )
            return micros(low), micros(high) if high else MAX
        day = int(day_s)
        if hour_s is None:
            low = datetime(year, month, day, tzinfo=UTC)
            return micros(low), micros(low) + 86_400_000_000
        tz = _zone(zone)
        if minute_s is None:
            return None  # hours alone are not a FHIR precision
        second = int(second_s or 0)
        micro = int((fraction or "")[:6].ljust(6, "0")) if fraction else 0
        moment = datetime(year, month, day, int(hour_s), int(minute_s), second, micro, tzinfo=tz)
    except ValueError:
        return None
    low = micros(moment)
    if second_s is None:
        return low, low + 60_000_000
    if fraction is None:
        return low, low + 1_000_000
    digits = min(len(fraction), 6)
    return low, low + 10 ** (6 - digits)


def _zone(zone: str | None) -> tzinfo:
    if zone is None or zone == "Z" or zone in ("+00:00", "-00:00"):
        return UTC
    sign = 1 if zone[0] == "+" else -1
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(zone)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def period_range(period: dict) -> tuple[int, int] | None:
    """A Period: from the start of `start` to the end of `end`; a missing side is open."""
    start, end = period.get("start"), period.get("end")
    low = parse_range(start) if isinstance(start, str) else None
    high = parse_range(end) if isinstance(end, str) else None
    if low is None and high is None:
        return None
    return (low[0] if low else MIN), (high[1] if high else MAX)


def timing_range(timing: dict) -> tuple[int, int] | None:
    """A Timing: from its first to its last event, else its repeat.boundsPeriod."""
    ranges = [r for e in timing.get("event") or () if isinstance(e, str) and (r := parse_range(e))]
    if ranges:
        return min(r[0] for r in ranges), max(r[1] for r in ranges)
    bounds = (timing.get("repeat") or {}).get("boundsPeriod")
    return period_range(bounds) if isinstance(bounds, dict) else None
