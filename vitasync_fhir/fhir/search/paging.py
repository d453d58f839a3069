"""Opaque cursors for keyset paging: the sort values of the row a page continues from.

A cursor is base64url JSON {"s": the _sort it belongs to, "k": sort values of that row (its id
last), "p": 1 when it asks for the page before the row}. Rows written between two requests can
never shift a page the way OFFSET does; a cursor from another `_sort` is refused.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from vitasync_fhir.fhir.outcomes import FhirError


def _bad() -> FhirError:
    return FhirError(
        400,
        "invalid",
        "Parameter _cursor: the cursor is not valid for this search",
        expression="_cursor",
    )


def encode(signature: str, values: Sequence[Any], *, previous: bool) -> str:
    keys = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    payload: dict = {"s": signature, "k": keys}
    if previous:
        payload["p"] = 1
    return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")


def decode(cursor: str, signature: str, kinds: Sequence[str]) -> tuple[list[Any], bool]:
    """(sort values, whether the page before them is asked for); 400 when it does not fit."""
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if payload.get("s") != signature or len(payload["k"]) != len(kinds):
            raise _bad()
        values = [_read(v, kind) for v, kind in zip(payload["k"], kinds, strict=True)]
    except FhirError:
        raise
    except Exception:  # noqa: BLE001 - any garbage in a cursor is the client's error
        raise _bad() from None
    return values, bool(payload.get("p"))


def _read(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "instant":
        return datetime.fromisoformat(value)
    if kind == "int":
        if not isinstance(value, int) or not -(2**63) <= value < 2**63:  # a database integer
            raise ValueError(value)
        return value
    if kind == "float":
        return float(value)
    if not isinstance(value, str):
        raise ValueError(value)
    return value
