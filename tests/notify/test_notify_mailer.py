"""The mailer against a real SMTP server: STARTTLS required, implicit TLS, certificate checks,
credentials never in the clear, and the .eml outbox folder."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path

import pytest
from notify_helpers import SMTP_PASSWORD, SMTP_USER, SmtpServer, notify_settings

from vitasync_fhir.config import Settings
from vitasync_fhir.notify import mailer


@pytest.fixture
def base(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", data_dir=tmp_path / "var")


def message(*, message_id: str = "<t1@clinic.test>", to: str = "jane@example.org") -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "VitaSync Clinic <no-reply@clinic.test>"
    mail["To"] = to
    mail["Subject"] = "Hello"
    mail["Message-ID"] = message_id
    mail.set_content("Line one\n.a line that starts with a dot\nLast line\n")
    return mail


def always() -> bool:
    return True


def test_starttls_login_and_delivery(smtp: SmtpServer, base: Settings) -> None:
    settings = smtp.settings(base)
    fenced: list[bool] = []

    def fence() -> bool:
        fenced.append(True)
        return True

    mailer.deliver(settings, message(), before_final_dot=fence)
    [arrival] = smtp.inbox.received
    assert arrival.tls and arrival.authenticated
    assert arrival.rcpt_tos == ["jane@example.org"]
    assert arrival.mail_from == "no-reply@clinic.test"
    assert arrival.message_id == "<t1@clinic.test>"
    assert ".a line that starts with a dot" in arrival.text  # dot-stuffing undone by the server
    assert smtp.inbox.auth_calls and all(tls for _, tls in smtp.inbox.auth_calls)
    assert fenced == [True]


def test_the_test_server_refuses_auth_before_starttls(smtp: SmtpServer) -> None:
    client = smtplib.SMTP("127.0.0.1", smtp.port, timeout=5)
    try:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.docmd("AUTH", "PLAIN AG1haWxlcgBzM2NyZXQtcGFzc3dvcmQ=")
        assert code == 530  # "Must issue a STARTTLS command first"
        code, _ = client.docmd("MAIL", "FROM:<x@clinic.test>")
        assert code == 530
    finally:
        client.close()
    assert smtp.inbox.auth_calls == []


def test_stripped_starttls_is_refused_and_credentials_never_sent(
    certificates, base: Settings
) -> None:
    server = SmtpServer(certificates, mode="stripped").start()
    try:
        settings = server.settings(base)  # asks for starttls; the server offers only plaintext AUTH
        with pytest.raises(mailer.DeliveryError, match="does not offer STARTTLS"):
            mailer.deliver(settings, message(), before_final_dot=always)
        assert server.inbox.auth_calls == []  # AUTH was never attempted
        assert server.inbox.received == []
    finally:
        server.stop()


def test_untrusted_certificate_fails_verification(certificates, base: Settings) -> None:
    server = SmtpServer(certificates, rogue=True).start()
    try:
        settings = server.settings(base)  # trusts the test CA, which did not sign the rogue cert
        with pytest.raises(mailer.DeliveryError) as caught:
            mailer.deliver(settings, message(), before_final_dot=always)
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        assert server.inbox.auth_calls == [] and server.inbox.received == []
    finally:
        server.stop()


def test_system_trust_store_does_not_trust_the_test_ca(smtp: SmtpServer, base: Settings) -> None:
    settings = smtp.settings(base, smtp_ca_file=None)
    with pytest.raises(mailer.DeliveryError) as caught:
        mailer.deliver(settings, message(), before_final_dot=always)
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert smtp.inbox.auth_calls == []


def test_verification_can_be_turned_off_explicitly(certificates, base: Settings) -> None:
    server = SmtpServer(certificates, rogue=True).start()
    try:
        mailer.deliver(server.settings(base, smtp_verify=False), message(), before_final_dot=always)
        assert len(server.inbox.received) == 1
    finally:
        server.stop()


def test_implicit_tls(certificates, base: Settings) -> None:
    server = SmtpServer(certificates, mode="tls").start()
    try:
        mailer.deliver(server.settings(base), message(), before_final_dot=always)
        [arrival] = server.inbox.received
        assert arrival.tls and arrival.authenticated
    finally:
        server.stop()


def test_implicit_tls_verifies_the_certificate(certificates, base: Settings) -> None:
    server = SmtpServer(certificates, mode="tls", rogue=True).start()
    try:
        with pytest.raises(mailer.DeliveryError) as caught:
            mailer.deliver(server.settings(base), message(), before_final_dot=always)
        assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
        assert server.inbox.auth_calls == []
    finally:
        server.stop()


def test_no_credentials_over_an_unencrypted_connection(certificates, base: Settings) -> None:
    server = SmtpServer(certificates, mode="stripped").start()
    try:
        settings = server.settings(base, smtp_security="none")
        with pytest.raises(mailer.DeliveryError, match="unencrypted"):
            mailer.deliver(settings, message(), before_final_dot=always)
        assert server.inbox.auth_calls == [] and server.inbox.received == []
    finally:
        server.stop()


def test_wrong_password_is_a_delivery_error(smtp: SmtpServer, base: Settings) -> None:
    settings = smtp.settings(base, smtp_password="wrong")
    with pytest.raises(mailer.DeliveryError):
        mailer.deliver(settings, message(), before_final_dot=always)
    assert smtp.inbox.received == []
    assert SMTP_USER and SMTP_PASSWORD != "wrong"


def test_a_refused_fence_drops_the_message(smtp: SmtpServer, base: Settings) -> None:
    with pytest.raises(mailer.Fenced):
        mailer.deliver(smtp.settings(base), message(), before_final_dot=lambda: False)
    assert smtp.inbox.received == []


def test_recipient_refusals(smtp: SmtpServer, base: Settings) -> None:
    settings = smtp.settings(base)
    smtp.inbox.rcpt_reply = "451 4.3.0 Try again later"
    with pytest.raises(mailer.DeliveryError) as caught:
        mailer.deliver(settings, message(), before_final_dot=always)
    assert not isinstance(caught.value, mailer.PermanentFailure)
    smtp.inbox.rcpt_reply = "550 5.1.1 No such user"
    with pytest.raises(mailer.PermanentFailure):
        mailer.deliver(settings, message(), before_final_dot=always)
    assert smtp.inbox.received == []


def test_smtp_down_is_a_delivery_error(smtp: SmtpServer, base: Settings) -> None:
    settings = smtp.settings(base)
    smtp.stop()
    with pytest.raises(mailer.DeliveryError, match="Connection"):
        mailer.deliver(settings, message(), before_final_dot=always)


def test_eml_files_without_smtp_host_are_idempotent(base: Settings) -> None:
    settings = notify_settings(base)
    assert settings.smtp_host is None
    mailer.deliver(settings, message(message_id="<a.1@clinic.test>"), before_final_dot=always)
    mailer.deliver(settings, message(message_id="<a.1@clinic.test>"), before_final_dot=always)
    mailer.deliver(settings, message(message_id="<b.2@clinic.test>"), before_final_dot=always)
    files = sorted(p.name for p in (settings.data_dir / "outbox").iterdir())
    assert files == ["a.1@clinic.test.eml", "b.2@clinic.test.eml"]
    text = (settings.data_dir / "outbox" / "a.1@clinic.test.eml").read_text()
    assert "Message-ID: <a.1@clinic.test>" in text and "To: jane@example.org" in text
