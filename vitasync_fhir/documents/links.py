"""Signed, expiring verification links: what a QR code encodes.

A link holds no patient data, only `Type/id` and an expiry, signed (JWS, HS256) with a secret made
on first use and kept as a 0600 file under data_dir, like the token signing key. Opening a link
still needs a sign-in and the role policy; the signature only proves the server printed it.

The expiry is rounded down to a step (a tenth of the lifetime, at most a day), so links made within
one step are identical: a cached PDF and a fresh one carry the same code.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from vitasync_fhir.auth.keys import persisted
from vitasync_fhir.config import Settings

PATH = "/verify/"
_HEADER = {"alg": "HS256"}
_PAYLOAD = re.compile(r"^([A-Za-z]{1,64})/([A-Za-z0-9\-.]{1,64}) (\d{1,12})$")
_cache: dict[Path, OctKey] = {}
_lock = threading.Lock()


class LinkError(Exception):
    """A link that does not verify (`expired` False) or has expired (`expired` True)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Link:
    resource_type: str
    resource_id: str
    expires: int  # epoch seconds
    token: str

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


def key_path(settings: Settings) -> Path:
    return settings.link_key_file or settings.data_dir / "keys" / "links.key"


def secret(settings: Settings) -> OctKey:
    """The link secret, made and saved the first time it is needed."""
    path = key_path(settings).resolve()
    with _lock:
        key = _cache.get(path)
        if key is None:
            made = persisted(path, lambda: secrets.token_urlsafe(48).encode())
            key = OctKey.import_key(made.strip())
            _cache[path] = key
        return key


def expiry(settings: Settings, now: float | None = None) -> int:
    lifetime = settings.qr_link_seconds
    step = min(86400, max(1, lifetime // 10))
    moment = int(time.time() if now is None else now)
    return moment - moment % step + lifetime


def make(
    settings: Settings, resource_type: str, resource_id: str, *, now: float | None = None
) -> Link:
    expires = expiry(settings, now)
    payload = f"{resource_type}/{resource_id} {expires}".encode()
    token = jws.serialize_compact(_HEADER, payload, secret(settings))
    return Link(resource_type, resource_id, expires, token)


def url(settings: Settings, link: Link) -> str:
    return settings.base_url.rstrip("/") + PATH + link.token


def read(settings: Settings, token: str, *, now: float | None = None) -> Link:
    """The link a token stands for; LinkError when it was not signed by us or has expired."""
    try:
        found = jws.deserialize_compact(token, secret(settings), algorithms=["HS256"])
    except (JoseError, ValueError, TypeError):
        raise LinkError("This code was not issued by this server or has been altered") from None
    match = _PAYLOAD.match(found.payload.decode("utf-8", "replace"))
    if match is None:
        raise LinkError("This code was not issued by this server or has been altered")
    expires = int(match.group(3))
    if (time.time() if now is None else now) >= expires:
        raise LinkError("This code has expired; print the document again", expired=True)
    return Link(match.group(1), match.group(2), expires, token)
