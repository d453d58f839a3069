"""Callers of recently verified tokens, so a busy client does not cost a signature check and two
queries on every request.

An entry lives `auth_cache_seconds` at most (never past the token's expiry). Revoking a token or
changing an account in this process forgets every entry at once; another worker or machine sees
the change when its entry runs out, so `auth_cache_seconds` is the longest a revoked token can
still be used there. Set it to 0 to check every request against the database.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

from vitasync_fhir.auth.policy import Caller

MAX_ENTRIES = 10_000

_entries: OrderedDict[bytes, tuple[float, Caller]] = OrderedDict()


def _key(token: str) -> bytes:
    return hashlib.blake2b(token.encode(), digest_size=20).digest()


def get(token: str) -> Caller | None:
    key = _key(token)
    found = _entries.get(key)
    if found is None:
        return None
    until, caller = found
    if time.time() >= until:
        _entries.pop(key, None)
        return None
    return caller


def put(token: str, caller: Caller, *, seconds: float) -> None:
    if seconds <= 0:
        return
    until = time.time() + seconds
    if caller.expires_at is not None:
        until = min(until, caller.expires_at)
    _entries[_key(token)] = (until, caller)
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)


def forget_all() -> None:
    """A token was revoked or an account changed: check every caller afresh."""
    _entries.clear()
