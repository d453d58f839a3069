"""Hostile input against a real server (uvicorn, 2 workers): each gets a clean 4xx, never a 5xx,
and the server stays up. Malformed, truncated and non-UTF-8 JSON, a 10 MB body, 10,000-deep nesting,
huge arrays, SQL and FHIRPath injection strings in every search parameter of the busiest types,
path traversal in ids and file names, and header floods."""

from __future__ import annotations

import socket
from urllib.parse import quote, urlsplit

import httpx
import pytest
from factories import FHIR_JSON
from live import serving
from support import service_headers

from vitasync_fhir.fhir.search.registry import search_parameters

INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE resources; --",
    "\\' UNION SELECT content FROM resources --",
    "%' OR 1=1 --",
    "name.where(true) | Patient.id",
    "iif(true, 1, 0)",
    "$",
    "|",
    "\\",
    "ge",
    "eq' or ''='",
    "\x00",
    "🙂" * 50,
]
SEARCHED = ("Patient", "Observation", "MedicationRequest", "Encounter")


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("hostile")
    with serving(f"sqlite:///{folder / 'hostile.sqlite3'}", folder) as settings:
        headers = service_headers(settings)
        with httpx.Client(base_url=settings.base_url, headers=headers, timeout=60) as http:
            yield http


def _clean(answer: httpx.Response) -> None:
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text[:300])


def _still_up(server: httpx.Client) -> None:
    assert server.get("/fhir/metadata").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"resourceType": "Patient", "name": [{"family": "Tru',
        b"\xff\xfe\xfa\x00",
        b'{"resourceType": "Patient", "name": [{"family": "\xc3\x28"}]}',
        b"[" * 10_000 + b"]" * 10_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    ],
    ids=["unclosed", "truncated", "not-utf8", "bad-utf8-in-string", "deep-array", "deep-object"],
)
def test_malformed_bodies(server: httpx.Client, body: bytes) -> None:
    for path, headers in (
        ("/fhir/Patient", FHIR_JSON),
        ("/fhir", FHIR_JSON),
        ("/api/patients", {"Content-Type": "application/json"}),
    ):
        _clean(server.post(path, content=body, headers=headers))
    _still_up(server)


def test_ten_megabytes_and_huge_arrays(server: httpx.Client) -> None:
    text = '{"resourceType":"Patient","name":[{"family":"' + "x" * (10 * 1024 * 1024) + '"}]}'
    _clean(server.post("/fhir/Patient", content=text, headers=FHIR_JSON))
    names = ",".join(['{"family":"A"}'] * 300_000)
    wide = '{"resourceType":"Patient","name":[' + names + "]}"
    _clean(server.post("/fhir/Patient", content=wide, headers=FHIR_JSON))
    many = '{"resourceType":"Bundle","type":"batch","entry":[' + ",".join(["{}"] * 200_000) + "]}"
    _clean(server.post("/fhir", content=many, headers=FHIR_JSON))
    _still_up(server)


@pytest.mark.parametrize("resource_type", SEARCHED)
def test_injection_strings_in_every_search_parameter(server: httpx.Client, resource_type) -> None:
    codes = sorted({p["name"] for p in search_parameters(resource_type)})
    assert len(codes) > 10
    for code in codes:
        for value in INJECTIONS:
            answer = server.get(f"/fhir/{resource_type}", params={code: value})
            assert answer.status_code in (200, 400), (code, value, answer.text[:300])
            if answer.status_code == 200:  # an injection found no data it should not have
                assert answer.json().get("total", 0) == 0 or "entry" not in answer.json()
    _still_up(server)


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Patient/..%2F..%2Fetc%2Fpasswd",
        "/fhir/Patient/%2e%2e",
        "/fhir/Patient/a%00b",
        "/fhir/Patient/" + "a" * 5000,
        "/fhir/_export/..%2F..%2Fetc%2Fpasswd",
        "/fhir/_export/x/..%2F..%2F..%2Fetc%2Fpasswd",
        "/fhir/_export/x/Patient.ndjson%2F..%2F..%2Fsigning.pem",
        "/get_qr/..%2F..%2Fetc%2Fpasswd",
        "/print_prescription/..%2Fkeys%2Fsigning.pem",
        "/api/patients/..%2F..%2Fetc%2Fpasswd",
        "/verify/..%2F..%2Fkeys%2Flinks.key",
    ],
)
def test_path_traversal(server: httpx.Client, path: str) -> None:
    answer = server.get(path)
    _clean(answer)
    assert "BEGIN" not in answer.text and "root:" not in answer.text
    _still_up(server)


def test_header_floods(server: httpx.Client) -> None:
    many = {f"X-Flood-{n}": "x" * 100 for n in range(1_000)}
    try:
        answer = server.get("/fhir/metadata", headers=many)
        assert answer.status_code < 500
    except httpx.HTTPError:
        pass  # refusing the connection outright is a clean answer too
    host, port = urlsplit(str(server.base_url)).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 1_000_000)
        raw.sendall(b"\r\n\r\n")
        reply = raw.recv(200)
    assert not reply.startswith(b"HTTP/1.1 5"), reply
    big = server.get("/fhir/Patient", headers={"Authorization": "Bearer " + "a" * 60_000})
    assert big.status_code < 500
    _still_up(server)


def test_quoting_of_ids_does_not_leak(server: httpx.Client) -> None:
    made = server.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert made.status_code == 201
    quoted = quote(f"{made.json()['id']}' OR '1'='1", safe="")
    _clean(server.get(f"/fhir/Patient/{quoted}"))
