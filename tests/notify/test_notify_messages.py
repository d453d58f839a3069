"""The e-mail templates: every kind renders text and HTML, a clinic folder overrides, values are
escaped in HTML, times are shown in the clinic's zone."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import messages
from vitasync_fhir.notify.appointments import dedup_key, display_name, participant, telecom

APPOINTMENT = {
    "appointment_id": "apt-1",
    "start": "2030-03-04T09:30:00+00:00",
    "end": "2030-03-04T10:00:00+00:00",
    "name": "Jane Doe",
    "doctor_name": "Dr Ada Lovelace",
    "doctor_phone": "+1 555 0199",
    "doctor_email": "ada@clinic.test",
}


@pytest.fixture
def config(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        clinic_name="Riverside Clinic",
        clinic_address="1 River Road",
        clinic_timezone="Europe/Berlin",
        email_link_url="https://app.clinic.test",
    )


def render(config: Settings, kind: str, **context: object) -> messages.Rendered:
    return messages.render(config, kind, context)


def test_registration(config: Settings) -> None:
    mail = render(
        config,
        "registration",
        name="Jane",
        verify_url="https://app.clinic.test/verify?token=abc",
        verify_expires="2030-03-05T09:00:00+00:00",
    )
    assert mail.subject == "Welcome to Riverside Clinic: please confirm your e-mail address"
    for body in (mail.text, mail.html):
        assert "https://app.clinic.test/verify?token=abc" in body
        assert "https://app.clinic.test/login" in body  # how to sign in
        assert "works once" in body
        assert "Tuesday 5 March 2030, 10:00 (Europe/Berlin)" in body


def test_appointment_created(config: Settings) -> None:
    mail = render(config, "appointment-created", **APPOINTMENT)
    assert mail.subject == "Appointment confirmed: 4 Mar 2030 at 10:30"
    for body in (mail.text, mail.html):
        assert "Monday 4 March 2030" in body and "10:30" in body and "11:00" in body
        assert "Dr Ada Lovelace" in body and "+1 555 0199" in body and "ada@clinic.test" in body
        assert "documents" in body and "health information" in body


def test_appointment_rescheduled(config: Settings) -> None:
    mail = render(
        config,
        "appointment-rescheduled",
        **{**APPOINTMENT, "start": "2030-03-06T14:00:00+00:00", "end": None},
        previous_start="2030-03-04T09:30:00+00:00",
        availability_note="Dr Lovelace no longer works on Mondays.",
    )
    assert mail.subject == "Appointment moved to 6 Mar 2030 at 15:00"
    for body in (mail.text, mail.html):
        assert "Wednesday 6 March 2030" in body and "15:00" in body
        assert "Monday 4 March 2030, 10:30" in body  # the old time
        assert "no longer works on Mondays" in body
        assert "https://app.clinic.test/appointments/apt-1" in body  # the link to cancel
        assert "cancel" in body


def test_appointment_cancelled_with_and_without_refund(config: Settings) -> None:
    plain = render(config, "appointment-cancelled", **APPOINTMENT)
    assert plain.subject == "Appointment cancelled: 4 Mar 2030 at 10:30"
    assert "contact you about a refund" in plain.text
    refund = render(
        config, "appointment-cancelled", **APPOINTMENT, refund="EUR 40 back within 5 days."
    )
    for body in (refund.text, refund.html):
        assert "EUR 40 back within 5 days." in body and "Monday 4 March 2030" in body


def test_appointment_reminder(config: Settings) -> None:
    mail = render(config, "appointment-reminder", **APPOINTMENT)
    assert mail.subject == "Reminder: your appointment 4 Mar 2030 at 10:30"
    assert "reminder" in mail.text and "Dr Ada Lovelace" in mail.html


def test_password_reset(config: Settings) -> None:
    mail = render(config, "password-reset", reset_url="https://app.clinic.test/reset?t=1")
    assert "reset" in mail.subject.lower()
    assert "https://app.clinic.test/reset?t=1" in mail.text


def test_html_escapes_values_and_text_keeps_them(config: Settings) -> None:
    mail = render(config, "appointment-created", **{**APPOINTMENT, "doctor_name": "<b>Dr X</b>"})
    assert "&lt;b&gt;Dr X&lt;/b&gt;" in mail.html and "<b>Dr X</b>" not in mail.html
    assert "<b>Dr X</b>" in mail.text


def test_a_clinic_folder_overrides_single_templates(config: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "clinic-templates"
    folder.mkdir()
    (folder / "appointment-created.subject.txt").write_text("See you {{ start | shortday }}!")
    (folder / "_footer.txt").write_text("\n-- The Riverside team\n")
    config = config.model_copy(update={"email_templates_dir": folder})
    mail = render(config, "appointment-created", **APPOINTMENT)
    assert mail.subject == "See you 4 Mar 2030!"
    assert mail.text.rstrip().endswith("-- The Riverside team")
    assert "Please bring" in mail.html  # the built-in HTML is still used


def test_the_built_message(config: Settings) -> None:
    built = messages.build(
        config,
        kind="appointment-created",
        recipient="jane@example.org",
        message_id="<appointment-created.1@clinic.test>",
        context=APPOINTMENT,
    )
    assert built["Message-ID"] == "<appointment-created.1@clinic.test>"
    assert built["To"] == "jane@example.org" and built["Auto-Submitted"] == "auto-generated"
    assert built.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in built.iter_parts()] == ["text/plain", "text/html"]


def test_context_checks() -> None:
    with pytest.raises(ValueError, match="needs verify_url"):
        messages.check_context("registration", {"name": "Jane"})
    with pytest.raises(TypeError):
        messages.jsonable({"when": object()})
    assert messages.jsonable({"a": [1, {"b": None}]}) == {"a": [1, {"b": None}]}


def test_what_is_read_from_an_appointment() -> None:
    appointment = {
        "resourceType": "Appointment",
        "id": "apt-1",
        "meta": {"versionId": "3"},
        "status": "booked",
        "start": "2030-03-04T09:30:00Z",
        "reasonCode": [{"text": "Chest pain"}],
        "participant": [
            {"actor": {"reference": "Practitioner/doc-1"}, "status": "accepted"},
            {"actor": {"reference": "Patient/pat-1"}, "status": "accepted"},
        ],
    }
    assert participant(appointment, "Patient") == "pat-1"
    assert participant(appointment, "Practitioner") == "doc-1"
    assert dedup_key("appointment-created", appointment) == "appointment-created:apt-1"
    assert dedup_key("appointment-rescheduled", appointment) == "appointment-rescheduled:apt-1:3"
    assert dedup_key("appointment-reminder", appointment) == (
        "appointment-reminder:apt-1:2030-03-04T09:30:00Z"
    )
    doctor = {
        "name": [{"prefix": ["Dr"], "given": ["Ada"], "family": "Lovelace"}],
        "telecom": [{"system": "phone", "value": "+1 555"}],
    }
    assert display_name(doctor) == "Dr Ada Lovelace"
    assert telecom(doctor, "phone") == "+1 555" and telecom(doctor, "email") == ""
