"""Delivery of one e-mail: SMTP over STARTTLS or implicit TLS, or an .eml file in the outbox folder.

SMTP security: `starttls` requires the server to offer STARTTLS and never continues in plaintext
(a stripped STARTTLS is refused, not downgraded); `tls` speaks TLS from the first byte. Both verify
the server's certificate against the system's CAs or `smtp_ca_file`, and its name against
`smtp_host`, unless `smtp_verify` is turned off. Credentials are only ever sent inside TLS: with
`none`, configuring a user is an error.

The SMTP transaction is written out by hand (MAIL, RCPT, DATA) so that the caller can record, just
before the final ".", that the server may from now on hold the message (`before_final_dot`). A
failure before that point means the server has no message (RFC 5321 4.1.1.4: an unterminated DATA
is discarded); a missing reply after it is the uncertain case (RFC 1047).

Without an SMTP host each e-mail is written to `outbox_dir` as `<Message-ID>.eml`, atomically and
named by its Message-ID, so writing it again replaces it instead of adding a copy.
"""

from __future__ import annotations

import logging
import os
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import getaddresses, parseaddr
from pathlib import Path
from uuid import uuid4

from vitasync_fhir.config import Settings

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


class DeliveryError(Exception):
    """The message was not delivered and the server does not hold it; it may be tried again."""


class PermanentFailure(DeliveryError):
    """The server refused the message for good (5xx); trying again will not help."""


class Uncertain(Exception):
    """The final "." was sent but no answer came: the server may or may not hold the message."""


class Fenced(Exception):
    """`before_final_dot` refused (another attempt owns the message); nothing was delivered."""


def outbox_dir(settings: Settings) -> Path:
    return settings.outbox_dir or settings.data_dir / "outbox"


def tls_context(settings: Settings) -> ssl.SSLContext:
    cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    context = ssl.create_default_context(cafile=cafile)
    if not settings.smtp_verify:
        log.warning("SMTP certificate verification is off (VITASYNC_SMTP_VERIFY=false)")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def deliver(
    settings: Settings, message: EmailMessage, *, before_final_dot: Callable[[], bool]
) -> None:
    """Deliver `message`; raises DeliveryError, PermanentFailure, Uncertain or Fenced."""
    if not settings.smtp_host:
        write_eml(settings, message)
        return
    sender = parseaddr(str(message["From"]))[1]
    recipients = [address for _, address in getaddresses(message.get_all("To", []))]
    data = message.as_bytes(policy=SMTP)
    try:
        smtp = connect(settings)
    except (OSError, smtplib.SMTPException) as error:
        raise DeliveryError(_describe(error)) from error
    try:
        _transact(smtp, sender, recipients, data, before_final_dot)
    finally:
        _close(smtp)


def connect(settings: Settings) -> smtplib.SMTP:
    """An SMTP session that is encrypted (unless security is `none`) and logged in if configured."""
    security = settings.smtp_security
    host = settings.smtp_host or ""
    port = settings.smtp_port or DEFAULT_PORTS[security]
    if security == "none" and settings.smtp_user:
        raise DeliveryError(
            "refusing to send SMTP credentials over an unencrypted connection "
            "(set VITASYNC_SMTP_SECURITY to starttls or tls)"
        )
    timeout = settings.smtp_timeout
    local = socket.gethostname()
    smtp: smtplib.SMTP
    if security == "tls":
        smtp = smtplib.SMTP_SSL(
            host, port, local_hostname=local, timeout=timeout, context=tls_context(settings)
        )
    else:
        smtp = smtplib.SMTP(host, port, local_hostname=local, timeout=timeout)
    try:
        smtp.ehlo()
        if security == "starttls":
            if not smtp.has_extn("starttls"):
                raise DeliveryError(
                    f"{host}:{port} does not offer STARTTLS; refusing to continue in plaintext"
                )
            smtp.starttls(context=tls_context(settings))
            smtp.ehlo()
        if settings.smtp_user:
            if not isinstance(smtp.sock, ssl.SSLSocket):  # never reached; checked once more
                raise DeliveryError("refusing to log in over an unencrypted connection")
            password = settings.smtp_password.get_secret_value() if settings.smtp_password else ""
            smtp.login(settings.smtp_user, password)
    except BaseException:
        _close(smtp)
        raise
    return smtp


def _transact(
    smtp: smtplib.SMTP,
    sender: str,
    recipients: list[str],
    data: bytes,
    before_final_dot: Callable[[], bool],
) -> None:
    try:
        code, reply = smtp.mail(sender)
        _expect(code, reply, "MAIL FROM", permanent=False)
        refused = []
        for recipient in recipients:
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                refused.append((recipient, code, reply))
        if refused:
            permanent = all(code >= 500 for _, code, _ in refused)
            text = "; ".join(f"{r}: {c} {_text(m)}" for r, c, m in refused)
            raise (PermanentFailure if permanent else DeliveryError)(f"RCPT refused: {text}")
        code, reply = smtp.docmd("DATA")
        _expect(code, reply, "DATA", permanent=False, wanted=354)
    except (OSError, smtplib.SMTPException) as error:
        raise DeliveryError(_describe(error)) from error
    # Inside DATA, any way out but the final "." drops the connection, so the server discards
    # the unterminated message (a polite QUIT would only become part of the message text).
    try:
        smtp.send(_dot_stuffed(data))
        go_ahead = before_final_dot()
        if go_ahead:
            smtp.send(b".\r\n")
    except BaseException as error:
        _abort(smtp)
        if isinstance(error, OSError | smtplib.SMTPException):
            raise DeliveryError(_describe(error)) from error
        raise
    if not go_ahead:
        _abort(smtp)
        raise Fenced("another attempt owns this message")
    try:
        code, reply = smtp.getreply()
    except (OSError, smtplib.SMTPException) as error:
        raise Uncertain(f"no answer after the end of DATA: {_describe(error)}") from error
    _expect(code, reply, "end of DATA", permanent=True)


def _expect(code: int, reply: bytes, step: str, *, permanent: bool, wanted: int = 250) -> None:
    if code == wanted:
        return
    error = PermanentFailure if permanent and code >= 500 else DeliveryError
    raise error(f"{step} answered {code} {_text(reply)}")


def _dot_stuffed(data: bytes) -> bytes:
    data = re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", data)
    data = re.sub(rb"(?m)^\.", b"..", data)
    return data if data.endswith(b"\r\n") else data + b"\r\n"


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def _describe(error: BaseException) -> str:
    return f"{error.__class__.__name__}: {error}"


def _abort(smtp: smtplib.SMTP) -> None:
    try:
        if smtp.sock is not None:
            smtp.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    smtp.close()


def _close(smtp: smtplib.SMTP) -> None:
    try:
        if smtp.sock is not None:
            smtp.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        smtp.close()


def eml_path(settings: Settings, message_id: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._@-]", "_", message_id.strip("<>"))
    return outbox_dir(settings) / f"{name}.eml"


def write_eml(settings: Settings, message: EmailMessage) -> Path:
    """Write the message as an .eml file named by its Message-ID; a rewrite replaces it."""
    target = eml_path(settings, str(message["Message-ID"]))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{uuid4().hex}.part")
    with open(partial, "wb") as handle:
        handle.write(message.as_bytes(policy=SMTP))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, target)
    return target
