"""What every partner does first: discover the server, get a token; and what the suite keeps:
every resource the server answered with, for the independent validator."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import httpx
import orjson
from joserfc import jwt
from joserfc.jwk import ECKey

from conformance.stage import Service, Stage

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def smart_configuration(stage: Stage) -> dict:
    answer = httpx.get(f"{stage.fhir}/.well-known/smart-configuration", timeout=30)
    if answer.status_code == 404:  # the spec's place is under the FHIR base; the root also works
        answer = httpx.get(f"{stage.base}/.well-known/smart-configuration", timeout=30)
    answer.raise_for_status()
    return answer.json()


def backend_token(stage: Stage, service: Service, *, scope: str | None = None) -> dict:
    """SMART Backend Services: client_credentials with a signed JWT assertion (ES384)."""
    endpoint = smart_configuration(stage)["token_endpoint"]
    key = ECKey.import_key(Path(service.key_file).read_bytes())
    now = int(time.time())
    claims = {
        "iss": service.client_id,
        "sub": service.client_id,
        "aud": endpoint,
        "exp": now + 240,
        "jti": str(uuid.uuid4()),
    }
    header = {"alg": "ES384", "kid": service.kid, "typ": "JWT"}
    assertion = jwt.encode(header, claims, key, algorithms=["ES384"])
    answer = httpx.post(
        endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": scope or service.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


class Returned:
    """Appends resources the server returned to an NDJSON file of the stage's out folder."""

    _lock = threading.Lock()

    def __init__(self, stage: Stage, name: str) -> None:
        self.path = Path(stage.out) / f"{name}.ndjson"

    def add(self, resources: Iterable[dict]) -> None:
        with self._lock, self.path.open("ab") as out:
            for resource in resources:
                out.write(orjson.dumps(resource) + b"\n")

    def add_lines(self, text: bytes) -> None:
        with self._lock, self.path.open("ab") as out:
            out.write(text if text.endswith(b"\n") else text + b"\n")


def references(node: object) -> Iterable[str]:
    """Every `reference` string inside a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)
