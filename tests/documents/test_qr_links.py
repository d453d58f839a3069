"""QR codes of any resource and the signed links they encode: sign-in, policy, expiry, fill."""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import time

import zxingcpp
from documents_helpers import PASSWORD
from factories import create, observation
from fastapi.testclient import TestClient
from PIL import Image

from vitasync_fhir.auth import tokens
from vitasync_fhir.config import Settings
from vitasync_fhir.documents import links, pages


def decode(png: bytes) -> str:
    found = zxingcpp.read_barcodes(
        Image.open(io.BytesIO(png)), formats=zxingcpp.BarcodeFormat.QRCode
    )
    texts = {code.text for code in found}  # a large image may be read twice, to the same text
    assert len(texts) == 1
    return texts.pop()


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def sign_in(app, user) -> TestClient:  # type: ignore[no-untyped-def]
    """A browser-like client with a /verify session for `user`."""
    browser = TestClient(app, base_url="http://testserver", follow_redirects=False)
    answer = browser.post(
        "/verify/sign-in",
        data={"email": user.email, "password": PASSWORD, "next": "/verify/signed-in"},
    )
    assert answer.status_code == 303, answer.text
    return browser


# -- /get_qr --------------------------------------------------------------------------------------


def test_png_decodes_to_the_link_in_the_header(
    anonymous: TestClient, settings: Settings, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    answer = anonymous.get(f"/get_qr/{prescription['id']}", headers=signed_in(role="doctor"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["content-disposition"].startswith("attachment; filename=")
    url = answer.headers["x-qr-url"]
    assert decode(answer.content) == url
    assert answer.headers["link"] == f'<{url}>; rel="related"'
    link = links.read(settings, token_of(url))
    assert link.reference == f"MedicationRequest/{prescription['id']}"
    assert prescription["patient"] not in url  # a reference and an expiry, nothing else


def test_svg_and_size(anonymous: TestClient, signed_in, prescription: dict) -> None:  # type: ignore[no-untyped-def]
    doctor = signed_in(role="doctor")
    path = f"/get_qr/{prescription['patient']}"  # any resource type: here a Patient
    svg = anonymous.get(path, params={"format": "svg", "size": 500}, headers=doctor)
    assert svg.status_code == 200
    assert svg.headers["content-type"] == "image/svg+xml"
    assert svg.content.startswith(b"<svg") and b'width="500"' in svg.content
    assert "/verify/" in svg.headers["x-qr-url"]
    small = anonymous.get(path, params={"size": 100}, headers=doctor)
    large = anonymous.get(path, params={"size": 800}, headers=doctor)
    small_width = Image.open(io.BytesIO(small.content)).size[0]
    large_width = Image.open(io.BytesIO(large.content)).size[0]
    assert small_width <= 100 < 700 < large_width <= 800
    assert decode(large.content) == large.headers["x-qr-url"]


def test_qr_refusals(anonymous: TestClient, signed_in, prescription: dict) -> None:  # type: ignore[no-untyped-def]
    rid = prescription["id"]
    assert anonymous.get(f"/get_qr/{rid}").status_code == 401
    doctor = signed_in(role="doctor")
    bad_format = anonymous.get(f"/get_qr/{rid}", params={"format": "gif"}, headers=doctor)
    assert (bad_format.status_code, bad_format.json()["error"]) == (400, "bad_request")
    assert anonymous.get(f"/get_qr/{rid}", params={"size": 5}, headers=doctor).status_code == 400
    unknown = anonymous.get("/get_qr/5a1b8f3e-0000-4000-8000-000000000000", headers=doctor)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "not_found")
    stranger = signed_in(role="patient")
    assert anonymous.get(f"/get_qr/{rid}", headers=stranger).status_code == 404


def test_a_pharmacist_cannot_get_a_code_for_an_observation(
    anonymous: TestClient, client: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    vitals = create(client, observation(patient_ref=f"Patient/{prescription['patient']}"))
    pharmacist = signed_in(role="pharmacist")
    # The pharmacist's role reads no Observation: for them no such resource exists.
    assert anonymous.get(f"/get_qr/{vitals['id']}", headers=pharmacist).status_code == 404
    nurse = signed_in(role="nurse")
    assert anonymous.get(f"/get_qr/{vitals['id']}", headers=nurse).status_code == 200


# -- opening the link --------------------------------------------------------------------------


def _link(anonymous: TestClient, signed_in, resource_id: str) -> str:  # type: ignore[no-untyped-def]
    answer = anonymous.get(f"/get_qr/{resource_id}", headers=signed_in(role="doctor"))
    return "/verify/" + token_of(answer.headers["x-qr-url"])


def test_without_a_session_the_link_asks_to_sign_in_then_returns(
    app, anonymous: TestClient, signed_in, make_account, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    path = _link(anonymous, signed_in, prescription["id"])
    browser = TestClient(app, base_url="http://testserver", follow_redirects=False)
    first = browser.get(path)
    assert first.status_code == 303
    assert first.headers["location"].startswith("/verify/sign-in?next=")
    form = browser.get(first.headers["location"])
    assert form.status_code == 200 and 'name="password"' in form.text
    hidden = re.search(r'name="next" value="([^"]+)"', form.text).group(1)
    assert hidden == path
    user = make_account(role="pharmacist")
    wrong = browser.post(
        "/verify/sign-in", data={"email": user.email, "password": "nope", "next": hidden}
    )
    assert wrong.status_code == 401
    done = browser.post(
        "/verify/sign-in", data={"email": user.email, "password": PASSWORD, "next": hidden}
    )
    assert done.status_code == 303 and done.headers["location"] == path
    cookie = done.headers["set-cookie"]
    assert "HttpOnly" in cookie and "Path=/verify" in cookie and "samesite=lax" in cookie.lower()
    shown = browser.get(path)
    assert shown.status_code == 200
    assert "Amoxicillin 500 mg capsule" in shown.text
    assert 'id="fill"' in shown.text  # a pharmacist lands on the fill workflow


def test_an_outside_next_is_ignored(app, make_account) -> None:  # type: ignore[no-untyped-def]
    user = make_account(role="doctor")
    browser = TestClient(app, base_url="http://testserver", follow_redirects=False)
    for target in ("https://evil.example.org/", "//evil.example.org/verify/x", "/fhir/Patient"):
        answer = browser.post(
            "/verify/sign-in", data={"email": user.email, "password": PASSWORD, "next": target}
        )
        assert answer.headers["location"] == "/verify/signed-in"


def test_allowed_roles_open_it_and_others_are_refused_and_audited(
    app, anonymous: TestClient, client: TestClient, signed_in, make_account, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    path = _link(anonymous, signed_in, prescription["id"])
    doctor = sign_in(app, make_account(role="doctor"))
    seen = doctor.get(path)
    assert seen.status_code == 200 and "Maja Lindqvist" in seen.text
    owner = sign_in(app, make_account(role="patient", fhir_id=prescription["patient"]))
    own = owner.get(path)
    assert own.status_code == 200 and 'id="fill"' not in own.text  # may read, may not fill

    stranger = make_account(role="patient")
    refused = sign_in(app, stranger).get(path)
    assert refused.status_code == 403
    assert "Maja" not in refused.text and "Amoxicillin" not in refused.text
    denials = client.get("/fhir/AuditEvent", params={"outcome": "4"}).json().get("entry", [])
    assert any(
        e["resource"]["entity"][0]["what"]["reference"] == f"MedicationRequest/{prescription['id']}"
        and stranger.fhir_user in str(e["resource"]["agent"])
        for e in denials
    )


def test_other_resource_types_open_on_a_plain_page(
    app, anonymous: TestClient, client: TestClient, signed_in, make_account, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    vitals = create(client, observation(patient_ref=f"Patient/{prescription['patient']}"))
    path = _link(anonymous, signed_in, vitals["id"])
    nurse = sign_in(app, make_account(role="nurse"))
    shown = nurse.get(path)
    assert shown.status_code == 200 and f"Observation/{vitals['id']}" in shown.text
    pharmacist = sign_in(app, make_account(role="pharmacist"))
    assert pharmacist.get(path).status_code == 403  # the role reads no Observation


def test_expired_and_tampered_links_are_refused(
    app, settings: Settings, make_account, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    browser = sign_in(app, make_account(role="pharmacist"))
    old = links.make(settings, "MedicationRequest", prescription["id"], now=time.time() - 10**8)
    expired = browser.get(f"/verify/{old.token}")
    assert expired.status_code == 410 and "expired" in expired.text
    good = links.make(settings, "MedicationRequest", prescription["id"])
    head, payload, signature = good.token.split(".")
    other = links.make(settings, "MedicationRequest", "someone-else").token.split(".")[1]
    for token in (f"{head}.{other}.{signature}", good.token[:-2] + "AA", "not-a-token"):
        answer = browser.get(f"/verify/{token}")
        assert answer.status_code == 400 and "not valid" in answer.text
    # Also refused before any sign-in: a bad code does not send anyone to the sign-in form.
    fresh = TestClient(app, base_url="http://testserver", follow_redirects=False)
    assert fresh.get(f"/verify/{old.token}").status_code == 410


def test_a_short_lifetime_setting_expires_the_link(
    app, settings: Settings, make_account, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    browser = sign_in(app, make_account(role="doctor"))
    short = settings.model_copy(update={"qr_link_seconds": 3})
    link = links.make(short, "MedicationRequest", prescription["id"])
    assert browser.get(f"/verify/{link.token}").status_code == 200
    time.sleep(max(0.0, link.expires - time.time()) + 0.1)
    assert browser.get(f"/verify/{link.token}").status_code == 410


def test_fill_from_the_link(
    app, anonymous: TestClient, client: TestClient, signed_in, make_account, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    path = _link(anonymous, signed_in, prescription["id"])
    browser = sign_in(app, make_account(role="pharmacist"))
    page = browser.get(path)
    key = re.search(r'name="form_key" value="([^"]+)"', page.text).group(1)
    assert browser.post(f"{path}/fill", data={"form_key": "forged"}).status_code == 403
    done = browser.post(f"{path}/fill", data={"form_key": key, "notes": "Counselled"})
    assert done.status_code == 303
    dispense_id = done.headers["location"].split("filled=")[1]
    dispense = client.get(f"/fhir/MedicationDispense/{dispense_id}").json()
    assert dispense["authorizingPrescription"][0]["reference"] == (
        f"MedicationRequest/{prescription['id']}"
    )
    assert dispense["note"][0]["text"] == "Counselled"
    after = browser.get(done.headers["location"])
    assert after.status_code == 200 and f"MedicationDispense/{dispense_id}" in after.text
    # The message is the server's: a made-up or unrelated dispense in the link shows none.
    other = client.post(
        "/fhir/MedicationDispense",
        json={
            "resourceType": "MedicationDispense",
            "status": "completed",
            "medicationCodeableConcept": {"text": "Other"},
        },
        headers={"Content-Type": "application/fhir+json"},
    ).json()["id"]
    for forged in ("NOT-A-REAL-DISPENSE - already collected", other):
        shown = browser.get(path, params={"filled": forged})
        assert shown.status_code == 200 and 'id="filled"' not in shown.text, forged


def test_a_prescription_that_cannot_be_filled(
    app,
    anonymous: TestClient,
    client: TestClient,
    settings: Settings,
    signed_in,
    make_account,
    prescription: dict,
) -> None:  # type: ignore[no-untyped-def]
    request = client.get(f"/fhir/MedicationRequest/{prescription['id']}").json()
    request["status"] = "cancelled"
    assert client.put(f"/fhir/MedicationRequest/{request['id']}", json=request).status_code == 200
    path = _link(anonymous, signed_in, prescription["id"])
    browser = sign_in(app, make_account(role="pharmacist"))
    page = browser.get(path)
    assert page.status_code == 200 and 'id="fill"' not in page.text
    assert 'name="form_key"' not in page.text
    # A hand-made post (the key this session's form would carry) is still refused, cleanly.
    jti = tokens.decode_access_token(settings, browser.cookies.get(pages.COOKIE))["jti"]
    secret = links.secret(settings).raw_value
    key = hmac.new(secret, f"{jti}|{path.rsplit('/', 1)[1]}".encode(), hashlib.sha256).hexdigest()
    refused = browser.post(f"{path}/fill", data={"form_key": key})
    assert refused.status_code == 409
    assert "cancelled, not active" in refused.text and "Amoxicillin" in refused.text
    assert client.get("/fhir/MedicationDispense").json().get("total", 0) == 0


def test_sign_out_ends_the_session(
    app, make_account, prescription: dict, settings: Settings
) -> None:  # type: ignore[no-untyped-def]
    browser = sign_in(app, make_account(role="doctor"))
    path = "/verify/" + links.make(settings, "MedicationRequest", prescription["id"]).token
    assert browser.get(path).status_code == 200
    cookie = browser.cookies.get("vitasync_verify")
    assert browser.post("/verify/sign-out").status_code == 200
    assert browser.get(path).status_code == 303
    replay = TestClient(app, base_url="http://testserver", follow_redirects=False)
    replay.cookies.set("vitasync_verify", cookie, path="/verify")
    assert replay.get(path).status_code == 303  # the token was revoked, not only forgotten
