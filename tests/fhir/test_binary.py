"""A Binary is read as its own content when the client asks for that media type (R4 binary.html),
and as a FHIR resource otherwise."""

from __future__ import annotations

import base64

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _binary(client, content_type: str, data: bytes) -> dict:  # type: ignore[no-untyped-def]
    made = client.post(
        "/fhir/Binary",
        json={
            "resourceType": "Binary",
            "contentType": content_type,
            "data": base64.b64encode(data).decode(),
        },
        headers=FHIR_JSON,
    )
    assert made.status_code == 201, made.text
    return made.json()


def test_a_binary_is_its_content_when_asked_in_its_media_type(client):
    made = _binary(client, "text/plain", b"hello, pharmacy")
    path = f"/fhir/Binary/{made['id']}"
    for accept in ("text/plain", "text/*", "text/plain; q=0.9, application/pdf"):
        native = client.get(path, headers={"Accept": accept})
        assert native.status_code == 200, accept
        assert native.content == b"hello, pharmacy"
        assert native.headers["content-type"].startswith("text/plain")
        assert native.headers["X-Content-Type-Options"] == "nosniff"
        assert native.headers["ETag"] == 'W/"1"'
    for accept in ("*/*", "application/fhir+json", "text/plain, application/json"):
        resource = client.get(path, headers={"Accept": accept})
        assert resource.json()["resourceType"] == "Binary", accept
    assert client.get(path, headers={"Accept": "image/png"}).status_code == 406
    vread = client.get(f"{path}/_history/1", headers={"Accept": "text/plain"})
    assert vread.content == b"hello, pharmacy"


def test_uploaded_html_is_served_sandboxed(client):
    page = b"<script>fetch('/fhir/Patient').then(r => r.text()).then(alert)</script>"
    made = _binary(client, "text/html", page)
    native = client.get(f"/fhir/Binary/{made['id']}", headers={"Accept": "text/html"})
    assert native.content == page
    assert native.headers["Content-Security-Policy"] == "sandbox"  # no script, no same origin
    assert native.headers["X-Content-Type-Options"] == "nosniff"
