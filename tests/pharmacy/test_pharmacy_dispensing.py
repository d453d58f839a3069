"""Repeat dispensing: repeats + 1 fills, not one more, not after the validity period, through
/fhir, bundles and /api fill, each fill recorded as a MedicationDispense."""

from __future__ import annotations

from factories import FHIR_JSON, create
from pharmacy_helpers import dispense, new_patient, prescription, put
from support import auth_headers

from vitasync_fhir.auth import tokens


def _fill_fhir(client, rx_id: str, pid: str, **extra):  # type: ignore[no-untyped-def]
    return client.post(
        "/fhir/MedicationDispense",
        json=dispense(request_id=rx_id, patient_id=pid, **extra),
        headers=FHIR_JSON,
    )


def _dispenses(client, rx_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    found = client.get(
        f"/fhir/MedicationDispense?prescription=MedicationRequest/{rx_id}&_count=100"
    ).json()
    return [e["resource"] for e in found.get("entry", [])]


def test_two_repeats_allow_three_fills_and_the_last_completes(client):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, repeats=2, quantity=21))
    first = _fill_fhir(client, rx["id"], pid)
    assert first.status_code == 201, first.text
    second = client.post(f"/api/prescriptions/{rx['id']}/fill", json={"quantity": 21})
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "active"
    assert client.get(f"/fhir/MedicationRequest/{rx['id']}").json()["status"] == "active"
    third = _fill_fhir(client, rx["id"], pid)
    assert third.status_code == 201, third.text
    done = client.get(f"/fhir/MedicationRequest/{rx['id']}").json()
    assert done["status"] == "completed" and done["meta"]["versionId"] == "2"
    fourth = _fill_fhir(client, rx["id"], pid)
    assert fourth.status_code == 409, fourth.text
    assert fourth.json()["issue"][0]["code"] == "business-rule"
    assert "already filled" in fourth.json()["issue"][0]["diagnostics"]
    by_api = client.post(f"/api/prescriptions/{rx['id']}/fill", json={})
    assert by_api.status_code == 409 and by_api.json()["error"] == "conflict"
    assert len(_dispenses(client, rx["id"])) == 3


def test_one_fill_without_repeats_then_409_even_when_reactivated(client):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid))
    assert client.post(f"/api/prescriptions/{rx['id']}/fill", json={}).status_code == 200
    assert client.get(f"/fhir/MedicationRequest/{rx['id']}").json()["status"] == "completed"
    # A prescription put on hold and resumed keeps its count of fills.
    other = create(client, prescription(patient_id=pid, repeats=0))
    created = _fill_fhir(client, other["id"], pid, status="in-progress")
    assert created.status_code == 201, created.text
    done = put(client, {**created.json(), "status": "completed"})
    assert done.status_code == 200, done.text
    assert client.get(f"/fhir/MedicationRequest/{other['id']}").json()["status"] == "completed"


def test_expired_and_not_yet_valid_prescriptions_are_not_filled(client):
    pid = new_patient(client)
    expired = create(
        client, prescription(patient_id=pid, repeats=3, valid=("2020-01-01", "2020-12-31"))
    )
    answer = _fill_fhir(client, expired["id"], pid)
    assert answer.status_code == 409, answer.text
    assert "expired" in answer.json()["issue"][0]["diagnostics"]
    by_api = client.post(f"/api/prescriptions/{expired['id']}/fill", json={})
    assert by_api.status_code == 409 and "expired" in by_api.json()["detail"]
    future = create(client, prescription(patient_id=pid, valid=("2999-01-01", None)))
    assert _fill_fhir(client, future["id"], pid).status_code == 409
    current = create(client, prescription(patient_id=pid, valid=("2020-01-01", "2999-12-31")))
    assert _fill_fhir(client, current["id"], pid).status_code == 201
    assert _dispenses(client, expired["id"]) == [] and _dispenses(client, future["id"]) == []


def test_quantity_status_and_unknown_prescription(client):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, repeats=1, quantity=21))
    too_much = _fill_fhir(client, rx["id"], pid, quantity=42)
    assert too_much.status_code == 409 and "at most 21" in too_much.text
    on_hold = create(client, prescription(patient_id=pid, status="on-hold", repeats=1))
    held = _fill_fhir(client, on_hold["id"], pid)
    assert held.status_code == 409 and "on-hold, not active" in held.text
    unknown = _fill_fhir(client, "no-such-rx", pid)
    assert unknown.status_code == 422, unknown.text
    preparing = _fill_fhir(client, on_hold["id"], pid, status="preparation")
    assert preparing.status_code == 201  # only a handed-over (completed) dispense is a fill


def test_a_transaction_counts_its_own_fills(client):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, repeats=1))

    def entry(n: int) -> dict:
        return {
            "fullUrl": f"urn:uuid:00000000-0000-0000-0000-00000000000{n}",
            "resource": dispense(request_id=rx["id"], patient_id=pid),
            "request": {"method": "POST", "url": "MedicationDispense"},
        }

    three = {"resourceType": "Bundle", "type": "transaction", "entry": [entry(n) for n in range(3)]}
    refused = client.post("/fhir", json=three, headers=FHIR_JSON)
    assert refused.status_code == 409, refused.text
    assert _dispenses(client, rx["id"]) == []
    two = {**three, "entry": three["entry"][:2]}
    answer = client.post("/fhir", json=two, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    assert len(_dispenses(client, rx["id"])) == 2
    assert client.get(f"/fhir/MedicationRequest/{rx['id']}").json()["status"] == "completed"
    history = client.get(f"/fhir/MedicationRequest/{rx['id']}/_history").json()
    assert [e["resource"]["status"] for e in history["entry"]] == ["completed", "active"]


def test_a_fill_of_nothing_or_less_uses_no_repeat(client):
    pid = new_patient(client)
    rx = create(client, prescription(patient_id=pid, repeats=0, quantity=21))
    for quantity in (-1, 0):
        refused = client.post(f"/api/prescriptions/{rx['id']}/fill", json={"quantity": quantity})
        assert refused.status_code in (400, 409, 422), refused.text
    assert _dispenses(client, rx["id"]) == []
    filled = client.post(f"/api/prescriptions/{rx['id']}/fill", json={"quantity": 21})
    assert filled.status_code == 200, filled.text


def test_a_patient_limited_token_cannot_fill_or_probe_another_patients_prescription(
    client, settings
):  # type: ignore[no-untyped-def]
    mine, other = new_patient(client), new_patient(client)
    hidden = create(client, prescription(patient_id=other, repeats=0, quantity=21))
    account = auth_headers(settings, role="pharmacist")
    claims = tokens.decode_access_token(settings, account["Authorization"].split()[1])
    limited = tokens.issue_access_token(
        settings,
        subject=claims["sub"],
        scope="patient/MedicationRequest.rs patient/MedicationDispense.cruds",
        patient=mine,
    )
    headers = {**FHIR_JSON, "Authorization": f"Bearer {limited.token}"}
    assert client.get(f"/fhir/MedicationRequest/{hidden['id']}", headers=headers).status_code == 404
    unknown = client.post(
        "/fhir/MedicationDispense",
        json=dispense(request_id="no-such-rx", patient_id=mine),
        headers=headers,
    ).json()
    # A dispense for their own patient, naming the hidden prescription: too much, then enough.
    for quantity in (99, 1):
        answer = client.post(
            "/fhir/MedicationDispense",
            json=dispense(request_id=hidden["id"], patient_id=mine, quantity=quantity),
            headers=headers,
        )
        assert answer.status_code == 422, answer.text
        issue = answer.json()["issue"][0]
        assert issue["code"] == unknown["issue"][0]["code"] == "processing"
        assert issue["diagnostics"] == unknown["issue"][0]["diagnostics"].replace(
            "no-such-rx", hidden["id"]
        )
    assert _dispenses(client, hidden["id"]) == []
    assert client.get(f"/fhir/MedicationRequest/{hidden['id']}").json()["status"] == "active"


def test_a_fill_for_another_patient_is_refused(client):
    pid, other = new_patient(client), new_patient(client)
    rx = create(client, prescription(patient_id=pid, repeats=0, quantity=21))
    wrong = _fill_fhir(client, rx["id"], other)
    assert wrong.status_code == 422, wrong.text
    assert wrong.json()["issue"][0]["expression"] == ["MedicationDispense.subject"]
    assert _dispenses(client, rx["id"]) == []
    assert client.get(f"/fhir/MedicationRequest/{rx['id']}").json()["status"] == "active"
    absolute = dispense(request_id=rx["id"], patient_id=pid)
    absolute["subject"] = {"reference": f"http://testserver/fhir/Patient/{pid}"}
    right = client.post("/fhir/MedicationDispense", json=absolute, headers=FHIR_JSON)
    assert right.status_code == 201, right.text


def test_an_order_not_to_give_and_a_proposal_are_not_filled(client):
    pid = new_patient(client)
    never = create(client, {**prescription(patient_id=pid), "doNotPerform": True})
    proposal = create(client, {**prescription(patient_id=pid), "intent": "proposal"})
    answer = _fill_fhir(client, never["id"], pid)
    assert answer.status_code == 409, answer.text
    assert "NOT to give" in answer.json()["issue"][0]["diagnostics"]
    by_api = client.post(f"/api/prescriptions/{never['id']}/fill", json={})
    assert by_api.status_code == 409 and "NOT to give" in by_api.json()["detail"]
    answer = _fill_fhir(client, proposal["id"], pid)
    assert answer.status_code == 409 and "proposal" in answer.json()["issue"][0]["diagnostics"]
    assert client.post(f"/api/prescriptions/{proposal['id']}/fill", json={}).status_code == 409
    assert _dispenses(client, never["id"]) == [] and _dispenses(client, proposal["id"]) == []
    for rx in (never, proposal):  # untouched
        assert client.get(f"/fhir/MedicationRequest/{rx['id']}").json()["status"] == "active"
    ordered = create(client, {**prescription(patient_id=pid), "intent": "original-order"})
    assert _fill_fhir(client, ordered["id"], pid).status_code == 201
