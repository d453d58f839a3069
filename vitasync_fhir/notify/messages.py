"""Rendering: each kind of e-mail is three Jinja2 templates, `<kind>.subject.txt`, `<kind>.txt` and
`<kind>.html`. A clinic overrides any of them by putting a file of the same name in
`email_templates_dir`; the built-in ones in `notify/templates/` fill in the rest.

The context an e-mail is rendered from holds ids and display values (names, times, links), never
clinical details: no reasons, diagnoses or notes.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from pathlib import Path
from uuid import uuid4
from zoneinfo import ZoneInfo

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    select_autoescape,
)

from vitasync_fhir.config import Settings

# What each kind needs in its context; `enqueue` refuses a context without it.
REQUIRED: dict[str, tuple[str, ...]] = {
    "registration": ("verify_url",),
    "account-exists": (),
    "password-reset": ("reset_url",),
    "appointment-created": ("appointment_id", "start"),
    "appointment-rescheduled": ("appointment_id", "start"),
    "appointment-cancelled": ("appointment_id", "start"),
    "appointment-reminder": ("appointment_id", "start"),
}
KINDS = frozenset(REQUIRED)

# Context keys that carry a live credential (a single-use link); blanked once the e-mail is sent.
SECRET_KEYS = ("verify_url", "reset_url")


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


def link_base(settings: Settings) -> str:
    return (settings.email_link_url or settings.base_url).rstrip("/")


def sender_domain(settings: Settings) -> str:
    address = parseaddr(settings.smtp_from)[1]
    return address.rpartition("@")[2] or socket.gethostname()


def new_message_id(settings: Settings) -> str:
    """A Message-ID that is unique for ever (not only within one database), fixed at enqueue;
    short, so that the header is never folded."""
    return f"<{uuid4().hex}@{sender_domain(settings)}>"


def check_context(kind: str, context: dict) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown e-mail kind {kind!r}; one of {sorted(KINDS)}")
    missing = [key for key in REQUIRED[kind] if not context.get(key)]
    if missing:
        raise ValueError(f"a {kind} e-mail needs {', '.join(missing)} in its context")


def _instant(value: str | datetime) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    # FHIR instants carry a zone; one without is read as UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@lru_cache(maxsize=16)
def _environment(override: Path | None, zone: str) -> Environment:
    loaders = [FileSystemLoader(str(override))] if override else []
    loaders.append(PackageLoader("vitasync_fhir.notify", "templates"))
    environment = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    tz = ZoneInfo(zone)
    environment.globals["zone"] = zone

    def local(value: str | datetime) -> datetime:
        return _instant(value).astimezone(tz)

    environment.filters["day"] = lambda v: f"{local(v):%A} {local(v).day} {local(v):%B %Y}"
    environment.filters["clock"] = lambda v: f"{local(v):%H:%M}"
    environment.filters["when"] = lambda v: (
        f"{local(v):%A} {local(v).day} {local(v):%B %Y}, {local(v):%H:%M} ({zone})"
    )
    environment.filters["shortday"] = lambda v: f"{local(v).day} {local(v):%b %Y}"
    return environment


def _values(settings: Settings, context: dict) -> dict:
    clinic = {
        "name": settings.clinic_name,
        "address": settings.clinic_address,
        "phone": settings.clinic_phone,
        "email": settings.clinic_email,
    }
    base = link_base(settings)
    # Signing in and changing an appointment are the web frontend's pages: without one configured
    # the e-mails say how instead of linking to pages this server does not have.
    frontend = bool(settings.email_link_url)
    defaults = {
        "sign_in_url": f"{base}/login" if frontend else "",
        "forgot_url": "" if frontend else f"{base}/account/forgot-password",
        "name": "",
        "doctor_name": "",
    }
    if context.get("appointment_id"):
        defaults["cancel_url"] = (
            f"{base}/appointments/{context['appointment_id']}" if frontend else ""
        )
    return {**defaults, **context, "clinic": clinic, "link_base": base}


def render(settings: Settings, kind: str, context: dict) -> Rendered:
    environment = _environment(settings.email_templates_dir, settings.clinic_timezone)
    values = _values(settings, context)
    subject = environment.get_template(f"{kind}.subject.txt").render(values)
    return Rendered(
        subject=re.sub(r"\s+", " ", subject).strip(),
        text=environment.get_template(f"{kind}.txt").render(values),
        html=environment.get_template(f"{kind}.html").render(values),
    )


def build(
    settings: Settings, *, kind: str, recipient: str, message_id: str, context: dict
) -> EmailMessage:
    """The complete e-mail: text and HTML alternatives, with the outbox row's Message-ID."""
    rendered = render(settings, kind, context)
    message = EmailMessage(policy=SMTP)
    message["From"] = settings.smtp_from
    message["To"] = Address(addr_spec=recipient)
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def jsonable(context: dict) -> dict:
    """The context with dates as ISO text, ready for the outbox's JSON column."""

    def convert(value: object) -> object:
        if isinstance(value, datetime | date):
            return value.isoformat()
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise TypeError(f"e-mail context values must be JSON values, not {type(value).__name__}")

    return {str(k): convert(v) for k, v in context.items()}
