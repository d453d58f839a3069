"""Helpers the auth tests share (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

from fastapi.testclient import TestClient

BASE_URL = "http://testserver"
FHIR_BASE = f"{BASE_URL}/fhir"
PASSWORD = "correct horse battery"
REDIRECT = "https://app.example.org/callback"


def login(api: TestClient, email: str, password: str = PASSWORD) -> dict:
    answer = api.post("/api/auth/login", json={"email": email, "password": password})
    assert answer.status_code == 200, answer.text
    return answer.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    return verifier, challenge


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
