"""The server's signing key: an RSA key made on first start, kept as a 0600 PEM under data_dir.

Several workers may start at once; the key file is created with O_EXCL so exactly one key wins and
every worker loads that one.
"""

from __future__ import annotations

import os
import threading
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


def _load_or_create(path: Path) -> RSAKey:
    if not path.exists():
        _create(path)
    pem = path.read_bytes()
    key = RSAKey.import_key(pem)
    return RSAKey.import_key(
        pem, parameters={"kid": key.thumbprint(), "use": "sig", "alg": ALGORITHM}
    )


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = RSAKey.generate_key(2048, private=True).as_pem(private=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another worker made it first
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
