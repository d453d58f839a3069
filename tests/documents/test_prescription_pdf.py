"""The prescription PDF: its text, its three addresses, its cache, its paper, who may print it."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import zxingcpp
from documents_helpers import medication_request
from factories import create
from fastapi.testclient import TestClient
from PIL import Image
from pypdf import PdfReader

from vitasync_fhir.config import Settings
from vitasync_fhir.documents import links
from vitasync_fhir.documents.prescription import prescription_number


def text_of(pdf: bytes) -> str:
    reader = PdfReader(io.BytesIO(pdf))
    return " ".join(" ".join(page.extract_text().split()) for page in reader.pages)


def test_pdf_shows_drug_dose_patient_and_prescriber(
    anonymous: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    doctor = signed_in(role="doctor")
    answer = anonymous.get(f"/print_prescription/{prescription['id']}", headers=doctor)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/pdf"
    assert answer.content.startswith(b"%PDF-")
    number = prescription_number(prescription["id"])
    expected_name = f"prescription-lindqvist-2026-11-27-{number.lower()}.pdf"
    assert answer.headers["content-disposition"] == f'attachment; filename="{expected_name}"'
    assert "no-store" in answer.headers["cache-control"]
    text = text_of(answer.content)
    for shown in (
        "Amoxicillin 500 mg capsule",  # drug
        "500 mg",  # dose
        "oral",
        "three times a day",
        "7 days",
        "21 capsules",
        "Take with food",
        "Finish the whole course",
        "Maja Lindqvist",  # patient
        "12 Mar 1984",
        "MRN MRN-40221",
        "Dr. Amara Okafor",  # prescriber
        "NPI 1234567893",
        number,
        "27 Nov 2026",
    ):
        assert shown in text, (shown, text)


def test_the_three_addresses_give_the_same_document(
    anonymous: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    nurse = signed_in(role="nurse")
    rid = prescription["id"]
    paths = (
        f"/print_prescription/{rid}",
        f"/api/prescriptions/{rid}/pdf",
        f"/fhir/MedicationRequest/{rid}/$print",
    )
    answers = [anonymous.get(path, headers=nurse) for path in paths]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.content for a in answers}) == 1  # one render, then the cache
    assert len({a.headers["content-disposition"] for a in answers}) == 1
    assert [a.headers["x-render-cache"] for a in answers] == ["miss", "hit", "hit"]


def test_capability_statement_lists_print(anonymous: TestClient) -> None:
    rest = anonymous.get("/fhir/metadata").json()["rest"][0]
    requests = next(r for r in rest["resource"] if r["type"] == "MedicationRequest")
    entries = {op["name"]: op["definition"] for op in requests.get("operation", [])}
    assert entries["print"].endswith("/OperationDefinition/MedicationRequest-print")


def test_an_edit_never_prints_stale(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    doctor = signed_in(role="doctor")
    path = f"/api/prescriptions/{prescription['id']}/pdf"
    first = anonymous.get(path, headers=doctor)
    again = anonymous.get(path, headers=doctor)
    assert (first.headers["x-render-cache"], again.headers["x-render-cache"]) == ("miss", "hit")
    assert again.content == first.content

    changed = medication_request(
        patient_id=prescription["patient"], practitioner_id=prescription["practitioner"], dose=250
    )
    changed["id"] = prescription["id"]
    put = client.put(f"/fhir/MedicationRequest/{prescription['id']}", json=changed)
    assert put.status_code == 200, put.text
    edited = anonymous.get(path, headers=doctor)
    assert edited.headers["x-render-cache"] == "miss"
    assert "250 mg" in text_of(edited.content)

    person = client.get(f"/fhir/Patient/{prescription['patient']}").json()
    person["name"][0]["family"] = "Berglund"
    assert client.put(f"/fhir/Patient/{person['id']}", json=person).status_code == 200
    renamed = anonymous.get(path, headers=doctor)
    assert renamed.headers["x-render-cache"] == "miss"
    assert "Maja Berglund" in text_of(renamed.content)
    assert "lindqvist" not in renamed.headers["content-disposition"]


def test_paper_size(anonymous: TestClient, signed_in, prescription: dict) -> None:  # type: ignore[no-untyped-def]
    doctor = signed_in(role="doctor")
    path = f"/print_prescription/{prescription['id']}"
    sizes = {}
    for paper in ("A4", "letter"):
        answer = anonymous.get(path, params={"paper": paper}, headers=doctor)
        box = PdfReader(io.BytesIO(answer.content)).pages[0].mediabox
        sizes[paper] = (round(float(box.width)), round(float(box.height)))
    assert sizes == {"A4": (595, 842), "letter": (612, 792)}
    bad = anonymous.get(path, params={"paper": "tabloid"}, headers=doctor)
    assert bad.status_code == 400
    assert bad.json()["error"] == "bad_request"


def test_the_printed_code_decodes_to_the_verification_link(
    anonymous: TestClient, settings: Settings, signed_in, prescription: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm is missing (apt-get install -y poppler-utils)")
    answer = anonymous.get(
        f"/print_prescription/{prescription['id']}", headers=signed_in(role="doctor")
    )
    (tmp_path / "rx.pdf").write_bytes(answer.content)
    subprocess.run(
        ["pdftoppm", "-r", "150", "-png", "-singlefile", "rx.pdf", "page"], cwd=tmp_path, check=True
    )
    found = zxingcpp.read_barcodes(Image.open(tmp_path / "page.png"))
    assert len(found) == 1
    url = found[0].text
    assert url.startswith(f"{settings.base_url}/verify/")
    link = links.read(settings, url.rsplit("/", 1)[1])
    assert link.reference == f"MedicationRequest/{prescription['id']}"
    assert prescription["patient"] not in url and "Lindqvist" not in url


def test_a_clinic_template_and_branding(
    app, settings: Settings, signed_in, prescription: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "clinic-templates"
    folder.mkdir()
    (folder / "prescription.html").write_text(
        "<html><body><h1>{{ clinic.name }}</h1>"
        "<p>{{ rx.medication }} for {{ patient.name }}</p></body></html>"
    )
    app.state.settings = settings.model_copy(
        update={"documents_templates_dir": folder, "clinic_name": "Harbour Family Practice"}
    )
    with TestClient(app) as browser:
        path = f"/print_prescription/{prescription['id']}"
        answer = browser.get(path, headers=signed_in(role="doctor"))
        assert answer.status_code == 200
        text = text_of(answer.content)
        assert "Harbour Family Practice" in text
        assert "Amoxicillin 500 mg capsule for Maja Lindqvist" in text
        (folder / "prescription.html").write_text(
            '{% extends "builtin/prescription.html" %}'
            "{% block footer %}<p>Edited footer of {{ rx.number }}</p>{% endblock %}"
        )
        edited = browser.get(path, headers=signed_in(role="doctor"))
        assert edited.headers["x-render-cache"] == "miss"
        text = text_of(edited.content)
        assert f"Edited footer of {prescription_number(prescription['id'])}" in text
        assert "Dr. Amara Okafor" in text and "Scan to verify" not in text


# -- who may print -------------------------------------------------------------------------------


def test_unauthenticated_requests_answer_401(anonymous: TestClient, prescription: dict) -> None:
    rid = prescription["id"]
    for path in (f"/print_prescription/{rid}", f"/api/prescriptions/{rid}/pdf"):
        answer = anonymous.get(path)
        assert answer.status_code == 401
        assert answer.json()["error"] == "unauthorized"
    fhir = anonymous.get(f"/fhir/MedicationRequest/{rid}/$print")
    assert fhir.status_code == 401
    assert fhir.json()["issue"][0]["code"] == "login"


def test_a_patient_prints_their_own_and_not_anothers(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    own = signed_in(role="patient", patient_id=prescription["patient"])
    assert (
        anonymous.get(f"/print_prescription/{prescription['id']}", headers=own).status_code == 200
    )
    other = signed_in(role="patient")
    refused = anonymous.get(f"/print_prescription/{prescription['id']}", headers=other)
    assert refused.status_code == 404
    assert refused.json()["error"] == "not_found"
    fhir = anonymous.get(f"/fhir/MedicationRequest/{prescription['id']}/$print", headers=other)
    assert fhir.status_code == 404
    assert fhir.json()["issue"][0]["code"] == "not-found"
    audit = client.get("/fhir/AuditEvent", params={"outcome": "4"}).json()
    assert any(
        e["resource"]["entity"][0]["what"]["reference"] == f"MedicationRequest/{prescription['id']}"
        for e in audit.get("entry", [])
    ), "the refused print is audited"


def test_a_token_without_prescriptions_answers_403(
    anonymous: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    narrow = signed_in(role="doctor", scope="user/Patient.rs")
    answer = anonymous.get(f"/api/prescriptions/{prescription['id']}/pdf", headers=narrow)
    assert answer.status_code == 403
    assert answer.json()["error"] == "forbidden"


def test_unknown_and_malformed_ids(anonymous: TestClient, signed_in) -> None:  # type: ignore[no-untyped-def]
    doctor = signed_in(role="doctor")
    missing = anonymous.get(
        "/print_prescription/9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d", headers=doctor
    )
    assert missing.status_code == 404
    fhir = anonymous.get("/fhir/MedicationRequest/nope/$print", headers=doctor)
    assert fhir.status_code == 404
    assert fhir.json()["issue"][0]["code"] == "not-found"
    bad = anonymous.get("/print_prescription/bad%20id!", headers=doctor)
    assert bad.status_code == 400


def test_a_deleted_prescription_answers_410(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    assert client.delete(f"/fhir/MedicationRequest/{prescription['id']}").status_code == 204
    answer = anonymous.get(
        f"/print_prescription/{prescription['id']}", headers=signed_in(role="doctor")
    )
    assert answer.status_code == 410


def test_filename_is_safe(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    person = client.get(f"/fhir/Patient/{prescription['patient']}").json()
    person["name"][0]["family"] = 'Ødegård "quote"/x'
    assert client.put(f"/fhir/Patient/{person['id']}", json=person).status_code == 200
    answer = anonymous.get(
        f"/print_prescription/{prescription['id']}", headers=signed_in(role="pharmacist")
    )
    assert answer.status_code == 200
    name = re.search(r'filename="([^"]+)"', answer.headers["content-disposition"]).group(1)
    number = prescription_number(prescription["id"]).lower()
    assert name == f"prescription-degard-quote-x-2026-11-27-{number}.pdf"


@pytest.mark.parametrize(("authored", "day"), [("2024", "2024"), ("2024-05", "2024-05")])
def test_a_partial_authored_on_date_prints(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict, authored, day
) -> None:  # type: ignore[no-untyped-def]
    # FHIR dateTime allows a year or a year and month: outside systems send them.
    rx = medication_request(
        patient_id=prescription["patient"], practitioner_id=prescription["practitioner"]
    )
    rid = create(client, {**rx, "authoredOn": authored})["id"]
    nurse = signed_in(role="nurse")
    for path in (f"/api/prescriptions/{rid}/pdf", f"/fhir/MedicationRequest/{rid}/$print"):
        answer = anonymous.get(path, headers=nurse)
        assert answer.status_code == 200, answer.text
        name = re.search(r'filename="([^"]+)"', answer.headers["content-disposition"]).group(1)
        assert name == f"prescription-lindqvist-{day}-{prescription_number(rid).lower()}.pdf"
        assert authored in text_of(answer.content)


def test_a_contained_medication_and_prescriber_are_printed(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    rx = medication_request(
        patient_id=prescription["patient"], practitioner_id=prescription["practitioner"]
    )
    del rx["medicationCodeableConcept"]
    rx |= {
        "contained": [
            {"resourceType": "Medication", "id": "drug", "code": {"text": "Contained 5 mg tablet"}},
            {"resourceType": "Practitioner", "id": "doc", "name": [{"text": "Dr. Inside Bundle"}]},
            {"resourceType": "Medication", "id": "other", "code": {"text": "Not this one"}},
        ],
        "medicationReference": {"reference": "#drug"},
        "requester": {"reference": "#doc"},
    }
    rid = create(client, rx)["id"]
    answer = anonymous.get(f"/print_prescription/{rid}", headers=signed_in(role="pharmacist"))
    assert answer.status_code == 200, answer.text
    text = text_of(answer.content)
    assert "Contained 5 mg tablet" in text and "Dr. Inside Bundle" in text
    assert "Not this one" not in text


def test_long_text_from_outside_systems_is_printed_shortened(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    # Unbounded, a megabyte of words held the renderer for minutes.
    rx = medication_request(
        patient_id=prescription["patient"], practitioner_id=prescription["practitioner"]
    )
    rx["note"] = [{"text": "start " + "word " * 5000 + "TAILEND"}]
    rx["dosageInstruction"] = [{"text": f"dose line {n}"} for n in range(30)]
    rid = create(client, rx)["id"]
    answer = anonymous.get(f"/print_prescription/{rid}", headers=signed_in(role="doctor"))
    assert answer.status_code == 200, answer.text
    text = text_of(answer.content)
    assert "start word" in text and "TAILEND" not in text
    assert "(shortened; the full text is in the record)" in text
    assert "dose line 19" in text and "dose line 20" not in text
    assert "10 more dosage instructions are in the record" in text


def test_a_logo_and_colours_are_printed(
    app, settings: Settings, signed_in, prescription: dict, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    logo = tmp_path / "logo.png"
    Image.new("RGB", (120, 60), (200, 30, 30)).save(logo)
    app.state.settings = settings.model_copy(update={"clinic_logo": logo, "brand_color": "#2e7d32"})
    path = f"/print_prescription/{prescription['id']}"
    with TestClient(app) as browser:
        doctor = signed_in(role="doctor")
        first = browser.get(path, headers=doctor)
        images = PdfReader(io.BytesIO(first.content)).pages[0].images
        assert sorted(image.image.size for image in images)[-1] == (120, 60)  # and the QR code
        Image.new("RGB", (90, 60), (30, 30, 200)).save(logo)
        again = browser.get(path, headers=doctor)
        assert again.headers["x-render-cache"] == "miss"  # a new logo is a new document
        images = PdfReader(io.BytesIO(again.content)).pages[0].images
        assert (90, 60) in [image.image.size for image in images]


def test_prescriptions_made_in_one_minute_have_different_numbers() -> None:
    """The number was a UUIDv7's first 8 digits, its timestamp: the same for a minute's work."""
    from vitasync_fhir.fhir.service import new_id

    ids = [new_id() for _ in range(1000)]
    assert len({prescription_number(i) for i in ids}) == 1000
    assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}", prescription_number(ids[0]))
    assert prescription_number("rx-2026-0042") == "rx-2026-0042"  # another server's id
