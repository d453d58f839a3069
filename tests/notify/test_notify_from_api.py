"""From the API call to the SMTP server's inbox: sign-up, password reset and every appointment
event, through the real queue (SQLite or Redis), a real consumer and aiosmtpd with STARTTLS, on
both databases."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient
from notify_helpers import SmtpServer, wait_until
from support import BASE_URL, service_headers

from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings
from vitasync_fhir.notify.worker import hosted


def test_api_calls_deliver_their_emails_once(
    settings: Settings, smtp: SmtpServer, queue_url: str | None
) -> None:
    config = smtp.settings(settings, redis_url=queue_url)
    with hosted(config), TestClient(create_app(config), base_url=BASE_URL) as api:
        api.headers.update(service_headers(config))
        signed_up = api.post(
            "/api/auth/register",
            json={
                "email": "nora@example.org",
                "password": "correct horse battery",
                "given": "Nora",
                "family": "Field",
            },
        )
        assert signed_up.status_code == 202, signed_up.text
        patient = api.post(
            "/api/patients",
            json={"family_name": "Doe", "given_name": "Jane", "email": "jane@example.org"},
        ).json()
        doctor = api.post(
            "/fhir/Practitioner",
            json={
                "resourceType": "Practitioner",
                "name": [{"family": "Lovelace", "given": ["Ada"]}],
                "telecom": [{"system": "phone", "value": "+1 555 0199"}],
            },
            headers={"Content-Type": "application/fhir+json"},
        ).json()["id"]
        slot = {
            "patient_id": patient["id"],
            "doctor_id": doctor,
            "start": "2030-03-04T09:30:00Z",
            "end": "2030-03-04T10:00:00Z",
        }
        booked = api.post("/api/appointments", json=slot).json()
        api.post(
            f"/api/appointments/{booked['id']}/reschedule",
            json={"start": "2030-03-06T14:00:00Z", "end": "2030-03-06T14:30:00Z"},
        )
        api.post(
            f"/api/appointments/{booked['id']}/cancel",
            json={"reason": "Travel", "refund": "Your deposit is refunded."},
        )
        assert (
            api.post("/api/appointments", json={**slot, "start": "bad"}).status_code == 422
        )  # sends nothing
        reset = api.post("/api/auth/password-reset", json={"email": "nora@example.org"})
        assert reset.status_code == 202, reset.text
        wait_until(lambda: len(smtp.inbox.received) >= 5, what="five e-mails")
        time.sleep(1.5)  # room for a duplicate to show up, if one could
    received = smtp.inbox.received
    assert len(received) == 5 and len(smtp.inbox.by_message_id()) == 5
    nora = [r for r in received if r.rcpt_tos == ["nora@example.org"]]
    welcome = next(r for r in nora if "verify-email?token=" in r.text)
    assert "Nora" in welcome.text
    assert any("token=" in r.text and r is not welcome for r in nora)  # the reset link
    jane = {r.message["Subject"]: r for r in received if r.rcpt_tos == ["jane@example.org"]}
    # Each message is its own task, so they may arrive in any order.
    confirmed = "Appointment confirmed: 4 Mar 2030 at 09:30"
    cancelled = "Appointment cancelled: 6 Mar 2030 at 14:00"
    assert set(jane) == {confirmed, "Appointment moved to 6 Mar 2030 at 14:00", cancelled}
    assert "Ada Lovelace" in jane[confirmed].text and "+1 555 0199" in jane[confirmed].text
    assert "Your deposit is refunded." in jane[cancelled].text
    assert all(r.tls and r.authenticated for r in received)
