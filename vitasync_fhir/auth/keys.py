"""The server's secrets: the RSA token signing key, and `persisted`, which makes any secret file
the first time it is needed (the QR link key too) and keeps it as a 0600 file under data_dir.

Several workers may start at once: a secret is written to a file of its own and then linked into
place, which fails if the name exists, so exactly one secret wins, every worker loads that one, and
none ever reads a half-written file.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from joserfc.jwk import KeySet, RSAKey

from vitasync_fhir.config import Settings

ALGORITHM = "RS256"
_cache: dict[Path, RSAKey] = {}
_lock = threading.Lock()


def key_path(settings: Settings) -> Path:
    return settings.signing_key_file or settings.data_dir / "keys" / "signing.pem"


def signing_key(settings: Settings) -> RSAKey:
    """The private signing key, made and saved the first time it is needed."""
    path = key_path(settings).resolve()
    with _lock:
        key = _cache.get(path)
        if key is None:
            key = _load_or_create(path)
            _cache[path] = key
        return key


def public_jwks(settings: Settings) -> dict:
    """The JSON Web Key Set published at /.well-known/jwks.json."""
    key = signing_key(settings)
    public = key.as_dict(private=False)
    return {"keys": [{**public, "use": "sig", "alg": ALGORITHM}]}


def public_keyset(settings: Settings) -> KeySet:
    return KeySet([signing_key(settings)])


def persisted(path: Path, make: Callable[[], bytes]) -> bytes:
    """The secret kept at `path`, made by `make` and saved (mode 0600) if there is none yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, draft = tempfile.mkstemp(dir=path.parent, prefix=".draft-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(make())
            os.link(draft, path)
        except FileExistsError:
            pass  # another worker made it first
        finally:
            os.unlink(draft)
    return path.read_bytes()


def _load_or_create(path: Path) -> RSAKey:
    pem = persisted(path, lambda: RSAKey.generate_key(2048, private=True).as_pem(private=True))
    key = RSAKey.import_key(pem)
    return RSAKey.import_key(
        pem, parameters={"kid": key.thumbprint(), "use": "sig", "alg": ALGORITHM}
    )
