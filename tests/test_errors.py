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
