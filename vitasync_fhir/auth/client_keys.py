"""The public keys a client signs its assertions with, chosen as SMART asks.

A client registers its JSON Web Key Set inline or as a JWK Set URL (`jwks_uri`), which is fetched
when needed, kept for `CACHE_SECONDS`, and fetched again (at most every `REFETCH_SECONDS`) when an
assertion names a `kid` the copy lacks: a client rotates keys by publishing the new one. The
assertion's `kid` must name exactly the key that verifies it, and a `jku` header is accepted only
when it is the client's registered URL ("If the jku header is not whitelisted, the signature
verification fails", SMART client-confidential-asymmetric).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx
from joserfc.jwk import KeySet

CACHE_SECONDS = 300.0
REFETCH_SECONDS = 30.0
FETCH_TIMEOUT = 5.0
MAX_BYTES = 64 * 1024

_fetched: dict[str, tuple[float, dict]] = {}


class NoKey(ValueError):
    """No key can verify this assertion; the message says why."""


def check_jwks(jwks: object) -> dict:
    """A public JSON Web Key Set a client may register (private keys are refused)."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValueError("A JWKS is an object with a non-empty `keys` list")
    for key in jwks["keys"]:
        if not isinstance(key, dict):
            raise ValueError("Each key of a JWKS is a JSON object")
        if any(part in key for part in ("d", "p", "q", "k")):
            raise ValueError("Register public keys only: this JWKS holds private or secret keys")
    KeySet.import_key_set(jwks)
    return jwks


def check_jwks_uri(uri: str) -> str:
    """A JWK Set URL a client may register: https, or http on this machine (development)."""
    parts = urlsplit(uri)
    loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if not (parts.scheme == "https" or loopback) or not parts.hostname or parts.fragment:
        raise ValueError(f"JWKS URL {uri!r} must be https (or loopback http), no fragment")
    return uri


async def signing_keys(header: dict, *, jwks: dict | None, jwks_uri: str | None) -> KeySet:
    """The registered key the assertion's header names; NoKey when there is none."""
    jku = header.get("jku")
    if jku is not None and jku != jwks_uri:
        raise NoKey("jku is not this client's registered JWKS URL")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise NoKey("the header has no kid")
    if jwks_uri is None:
        found = _with_kid(jwks or {}, kid)
    else:
        found = _with_kid(await _remote(jwks_uri, fresh=False), kid)
        if not found and _age(jwks_uri) >= REFETCH_SECONDS:  # a key published since
            found = _with_kid(await _remote(jwks_uri, fresh=True), kid)
    if not found:
        raise NoKey(f"no registered key has kid {kid!r}")
    return KeySet.import_key_set({"keys": found})


def _with_kid(jwks: dict, kid: str) -> list[dict]:
    return [key for key in jwks.get("keys", []) if isinstance(key, dict) and key.get("kid") == kid]


def _age(uri: str) -> float:
    held = _fetched.get(uri)
    return time.monotonic() - held[0] if held else float("inf")


async def _remote(uri: str, *, fresh: bool) -> dict:
    if not fresh and _age(uri) < CACHE_SECONDS:
        return _fetched[uri][1]
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as client:
            answer = await client.get(uri, headers={"Accept": "application/json"})
    except httpx.HTTPError as error:
        raise NoKey(f"the JWKS URL could not be read: {error.__class__.__name__}") from None
    if answer.status_code != 200 or len(answer.content) > MAX_BYTES:
        raise NoKey(f"the JWKS URL answered {answer.status_code} ({len(answer.content)} bytes)")
    try:
        jwks = check_jwks(answer.json())
    except ValueError as error:
        raise NoKey(f"the JWKS URL holds no usable JWKS: {error}") from None
    _fetched[uri] = (time.monotonic(), jwks)
    return jwks
