"""$validate: every problem with its path, 200 either way, modes, and nothing stored."""

from __future__ import annotations

from factories import FHIR_JSON, create, patient
from fastapi.testclient import TestClient
from operations_support import post_json


def _issues(answer) -> list[tuple[str, str, list[str] | None]]:  # type: ignore[no-untyped-def]
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["resourceType"] == "OperationOutcome"
    return [(i["severity"], i["code"], i.get("expression")) for i in body["issue"]]


def _count(client: TestClient, resource_type: str) -> int:
    return client.get(f"/fhir/{resource_type}", params={"_summary": "count"}).json()["total"]


def test_every_problem_is_listed_with_its_path(client: TestClient) -> None:
    bad = {"resourceType": "Patient", "gender": "robot", "active": "yes", "shoeSize": 44}
    issues = _issues(post_json(client, "/fhir/Patient/$validate", bad))
    assert sorted(issues) == [
        ("error", "code-invalid", ["Patient.gender"]),
        ("error", "structure", ["Patient.shoeSize"]),
        ("error", "value", ["Patient.active"]),
    ]
    assert _count(client, "Patient") == 0


def test_a_valid_resource_is_ok_and_not_stored(client: TestClient) -> None:
    answer = post_json(client, "/fhir/Patient/$validate", patient())
    assert _issues(answer) == [("information", "informational", None)]
    assert answer.json()["issue"][0]["diagnostics"] == "ok"
    assert _count(client, "Patient") == 0


def test_parameters_body_with_resource_and_mode(client: TestClient) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": {"resourceType": "Observation", "status": "done"}},
            {"name": "mode", "valueCode": "create"},
        ],
    }
    issues = _issues(post_json(client, "/fhir/Observation/$validate", body))
    assert ("error", "code-invalid", ["Observation.status"]) in issues
    assert ("error", "required", ["Observation.code"]) in issues
    assert _count(client, "Observation") == 0


def test_update_mode_checks_the_id(client: TestClient) -> None:
    stored = create(client, patient())
    changed = {**stored, "gender": "male"}
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": changed},
            {"name": "mode", "valueCode": "update"},
        ],
    }
    ok = post_json(client, f"/fhir/Patient/{stored['id']}/$validate", params)
    assert _issues(ok) == [("information", "informational", None)]
    wrong = post_json(client, "/fhir/Patient/other-id/$validate", params)
    assert _issues(wrong) == [("error", "invalid", ["Patient.id"])]
    # nothing changed
    assert client.get(f"/fhir/Patient/{stored['id']}").json()["gender"] == "female"


def test_delete_mode(client: TestClient, signed_in) -> None:  # type: ignore[no-untyped-def]
    stored = create(client, patient())
    params = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]}
    answer = post_json(client, f"/fhir/Patient/{stored['id']}/$validate", params)
    assert _issues(answer) == [("information", "informational", None)]
    assert client.get(f"/fhir/Patient/{stored['id']}").status_code == 200
    missing = post_json(client, "/fhir/Patient/nobody/$validate", params)
    assert missing.status_code == 404
    assert missing.json()["issue"][0]["code"] == "not-found"
    own = signed_in(role="patient", patient_id=stored["id"])
    denied = post_json(client, f"/fhir/Patient/{stored['id']}/$validate", params, **own)
    assert _issues(denied) == [("error", "forbidden", None)]


def test_request_errors(client: TestClient, anonymous: TestClient) -> None:
    raw = client.post("/fhir/Patient/$validate", content=b"{nope", headers=FHIR_JSON)
    assert raw.status_code == 400
    assert raw.json()["issue"][0]["code"] == "invalid"
    mode = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "guess"}]}
    assert post_json(client, "/fhir/Patient/$validate", mode).status_code == 400
    unknown = post_json(client, "/fhir/Nope/$validate", patient())
    assert unknown.status_code == 404
    xml = client.post(
        "/fhir/Patient/$validate",
        content=b"<Patient/>",
        headers={"Content-Type": "application/xml"},
    )
    assert xml.status_code == 415
    assert (
        anonymous.post("/fhir/Patient/$validate", json=patient(), headers=FHIR_JSON).status_code
        == 401
    )
    other = post_json(client, "/fhir/Observation/$validate", patient())
    assert _issues(other) == [("error", "invalid", ["resourceType"])]


def test_capability_statement_lists_the_operations(anonymous: TestClient) -> None:
    rest = anonymous.get("/fhir/metadata").json()["rest"][0]
    # rest.operation holds system operations only (R4: OperationDefinition.system = true).
    listed = {o["name"]: o["definition"] for o in rest["operation"]}
    assert listed == {"export": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"}
    by_type = {
        r["type"]: {o["name"]: o["definition"] for o in r.get("operation", [])}
        for r in rest["resource"]
    }
    hl7 = "http://hl7.org/fhir/OperationDefinition/"
    bulk = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/"
    assert by_type["Patient"] == {
        "everything": hl7 + "Patient-everything",
        "export": bulk + "patient-export",
        "validate": hl7 + "Resource-validate",
    }
    assert by_type["Group"] == {
        "export": bulk + "group-export",
        "validate": hl7 + "Resource-validate",
    }
    assert set(by_type["MedicationRequest"]) == {"print", "validate"}
    assert all("validate" in operations for operations in by_type.values())
