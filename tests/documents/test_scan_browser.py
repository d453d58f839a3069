"""A pharmacist scans a printed prescription, signs in and fills it, in a real headless Chromium."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import zxingcpp
from documents_helpers import PASSWORD, medication_request, patient, practitioner
from live import CHROMIUM_ARGS, chromium_path, live_app
from PIL import Image
from support import auth_headers, service_headers

from vitasync_fhir.config import Settings


@pytest.fixture
def chromium() -> Path:
    return chromium_path()


@pytest.fixture
def live(settings: Settings) -> Iterator[Settings]:
    with live_app(settings) as served:
        yield served


def test_pharmacist_scans_signs_in_and_fills(chromium: Path, live: Settings, make_account) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    admin = httpx.Client(base_url=live.base_url, headers=service_headers(live), timeout=30)
    made = {}
    for name, resource in (("patient", patient()), ("doctor", practitioner())):
        made[name] = admin.post(f"/fhir/{resource['resourceType']}", json=resource).json()["id"]
    order = medication_request(patient_id=made["patient"], practitioner_id=made["doctor"])
    rid = admin.post("/fhir/MedicationRequest", json=order).json()["id"]

    # The doctor prints; the code on the paper is what the pharmacist's phone reads.
    code = httpx.get(
        f"{live.base_url}/get_qr/{rid}", headers=auth_headers(live, role="doctor"), timeout=30
    )
    url = zxingcpp.read_barcodes(Image.open(io.BytesIO(code.content)))[0].text
    assert url.startswith(f"{live.base_url}/verify/")
    pharmacist = make_account(role="pharmacist")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            assert "/verify/sign-in" in page.url  # no session yet: sign in first
            page.fill("#email", pharmacist.email)
            page.fill("#password", PASSWORD)
            page.click("#sign-in")
            page.wait_for_selector("#medication")
            assert page.url == url  # back on the scanned link
            assert page.inner_text("#medication") == "Amoxicillin 500 mg capsule"
            assert "Maja Lindqvist" in page.inner_text("#patient")
            assert "Dr. Amara Okafor" in page.inner_text("#prescriber")
            page.fill("#notes", "Counselled on side effects")
            page.click("#fill")
            page.wait_for_selector("#filled")
            shown = page.inner_text("#filled")
        finally:
            browser.close()

    dispenses = admin.get(
        "/fhir/MedicationDispense", params={"prescription": f"MedicationRequest/{rid}"}
    ).json()
    assert len(dispenses.get("entry", [])) == 1
    dispense = dispenses["entry"][0]["resource"]
    assert dispense["id"] in shown
    assert dispense["note"][0]["text"] == "Counselled on side effects"
    assert dispense["performer"][0]["actor"]["reference"] == pharmacist.fhir_user
    admin.close()
