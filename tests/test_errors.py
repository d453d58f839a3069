"""Errors leave through one renderer: OperationOutcome on /fhir, {"error", "detail"} elsewhere."""

from __future__ import annotations

from fastapi.testclient import TestClient

from vitasync_fhir.app import create_app
from vitasync_fhir.auth import tokens
from vitasync_fhir.config import Settings


def test_database_down_is_503_with_an_outcome(tmp_path):
    settings = Settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:9/nowhere",
        base_url="http://testserver",
        data_dir=tmp_path,
    )
    token = tokens.issue_access_token(settings, subject="svc", client_id="svc", scope="system/*.rs")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        answer = client.get("/fhir/Patient/any", headers={"Authorization": f"Bearer {token.token}"})
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "transient"
    assert answer.headers["retry-after"]
    assert "Traceback" not in answer.text


def test_unknown_paths_outside_fhir_answer_error_and_detail(client):
    answer = client.get("/nothing-here")
    assert answer.status_code == 404
    assert set(answer.json()) == {"error", "detail"}
    assert answer.json()["error"] == "not_found"


def test_a_client_gone_before_its_body_is_no_server_error(settings, caplog):
    """A client that closes the connection halfway through its body (wrk at the end of a round)
    was logged as an unexpected error with a traceback, and answered 500."""
    import orjson
    from support import auth_headers

    headers = auth_headers(settings, role="admin")
    part = orjson.dumps({"resourceType": "Patient", "name": [{"family": "Half"}]})[:20]
    messages = [
        {"type": "http.request", "body": part, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw_headers += [(b"content-type", b"application/fhir+json"), (b"host", b"testserver")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/fhir/Patient",
        "raw_path": b"/fhir/Patient",
        "query_string": b"",
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    app = create_app(settings)
    with TestClient(app) as client, caplog.at_level("INFO"):
        client.portal.call(app, scope, receive, send)
        assert client.get("/fhir/Patient?family=Half", headers=headers).json()["total"] == 0
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert "client went away during POST /fhir/Patient" in caplog.text
