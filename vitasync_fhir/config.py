"""Settings: environment variables with the VITASYNC_ prefix, or a `.env` file."""

import json
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VITASYNC_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./vitasync.sqlite3",
        description="SQLAlchemy URL: sqlite:///file or postgresql+psycopg://user@host/db",
    )
    base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Public address of the server; FHIR links and Location headers start here",
    )
    data_dir: Path = Field(default=Path("./var"), description="Keys, outbox and exports")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, description="Largest request body")
    max_bundle_entries: int = Field(
        default=10_000, description="Most entries a batch or transaction posted to /fhir may hold"
    )
    default_page_size: int = Field(default=20, description="_count when a search gives none")
    max_page_size: int = Field(default=1000, description="Largest _count honoured")
    history_page_size: int = Field(default=50, description="Entries per history page")
    cors_origins: list[str] = Field(
        default_factory=list,
        description='Browser origins (JSON list, e.g. ["https://app.example.org"]) allowed by CORS',
    )
    db_pool_size: int = Field(
        default=10,
        description="Connections per worker (PostgreSQL): at most twice this many under load,"
        " half this many of them for reads by id",
    )
    db_statement_timeout_ms: int = Field(
        default=15000, description="PostgreSQL statement timeout; a timeout answers 503"
    )
    gc_freeze_seconds: float = Field(
        default=30,
        description="Seconds after start when a worker takes its live objects out of the"
        " cyclic garbage collector, once (0: never)",
    )
    thread_switch_ms: float = Field(
        default=0.5,
        gt=0,
        description="How long a thread of a worker may hold Python's interpreter lock while"
        " another waits (sys.setswitchinterval; Python's default is 5): the audit trail's"
        " writer thread would otherwise hold requests up to 5 ms at a time",
    )

    # -- authentication (auth/) -------------------------------------------------------------
    access_token_seconds: int = Field(default=900, description="Lifetime of an access token")
    refresh_token_seconds: int = Field(
        default=30 * 24 * 3600, description="Lifetime of a refresh token (offline_access, login)"
    )
    audit_flush_ms: int = Field(
        default=100, description="How long read AuditEvents gather before they are written"
    )
    audit_max_pending: int = Field(
        default=100_000,
        description="Read AuditEvents kept while the database is unreachable before the oldest go",
    )
    auth_cache_seconds: float = Field(
        default=5,
        description="How long a worker trusts a token it has checked (revocation elsewhere "
        "takes this long to reach it; 0 checks every request)",
    )
    authorization_code_seconds: int = Field(default=60, description="Lifetime of an OAuth code")
    account_token_seconds: int = Field(
        default=24 * 3600, description="Lifetime of e-mail verification and password reset links"
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="PEM private key signing tokens; default data_dir/keys/signing.pem",
    )
    login_slow_after: int = Field(default=3, description="Failed sign-ins before each waits longer")
    login_lock_after: int = Field(default=10, description="Failed sign-ins before a lockout")
    login_lock_seconds: int = Field(default=900, description="How long a lockout lasts")
    login_window_seconds: int = Field(
        default=900, description="Failures older than this are forgotten"
    )

    # -- e-mail and background work (notify/) -----------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="Redis for the Huey queue (production); unset: a SQLite queue in data_dir",
    )
    queue_name: str = Field(default="vitasync", description="Huey queue name (Redis key part)")
    embedded_worker: bool = Field(
        default=True,
        description="`serve` runs the queue consumer in its own process when no Redis is set",
    )
    smtp_host: str | None = Field(
        default=None, description="SMTP server; unset: e-mails become .eml files in outbox_dir"
    )
    smtp_port: int | None = Field(
        default=None, description="SMTP port; default 587 (starttls), 465 (tls), 25 (none)"
    )
    smtp_user: str | None = Field(default=None, description="SMTP login (only over TLS)")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP password")
    smtp_from: str = Field(
        default="VitaSync <no-reply@localhost>", description="From: of every e-mail"
    )
    smtp_security: str = Field(
        default="starttls",
        pattern="^(starttls|tls|none)$",
        description="starttls (required, never downgraded), tls (implicit, port 465) or none",
    )
    smtp_verify: bool = Field(default=True, description="Verify the SMTP server's certificate")
    smtp_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle trusted for SMTP; default: the system's"
    )
    smtp_timeout: float = Field(default=30.0, description="Seconds per SMTP network operation")
    outbox_dir: Path | None = Field(
        default=None, description="Where .eml files go without SMTP; default data_dir/outbox"
    )
    email_templates_dir: Path | None = Field(
        default=None, description="A clinic's e-mail templates, used before the built-in ones"
    )
    email_link_url: str | None = Field(
        default=None, description="Web frontend address for links in e-mails; default base_url"
    )
    clinic_name: str = Field(default="VitaSync Clinic", description="Signs every e-mail")
    clinic_address: str = Field(default="", description="Clinic address shown in e-mails")
    clinic_phone: str = Field(default="", description="Clinic phone shown in e-mails")
    clinic_email: str = Field(default="", description="Clinic contact address shown in e-mails")
    clinic_timezone: str = Field(
        default="UTC", description="IANA zone in which e-mails show appointment times"
    )
    notify_max_attempts: int = Field(default=8, description="SMTP attempts before dead-letter")
    notify_backoff_seconds: float = Field(
        default=30.0, description="First retry delay; doubles per attempt"
    )
    notify_backoff_max_seconds: float = Field(default=3600.0, description="Longest retry delay")
    notify_lease_seconds: float = Field(
        default=600.0, description="How long a send may take before it counts as interrupted"
    )
    notify_relay_grace_seconds: float = Field(
        default=60.0, description="How overdue an e-mail is before the relay queues it again"
    )
    reminder_interval_minutes: int = Field(
        default=10, description="How often the reminder scan runs (divides 60)"
    )
    reminder_lead_hours: float = Field(
        default=24.0, description="Reminders go out this long before an appointment"
    )

    # -- subscriptions (subscriptions/) ---------------------------------------------------------
    subscription_max_attempts: int = Field(
        default=6, description="Failed deliveries of one notification before the subscription errs"
    )
    subscription_backoff_seconds: float = Field(
        default=15.0, description="First notification retry delay; doubles per attempt"
    )
    subscription_backoff_max_seconds: float = Field(
        default=1800.0, description="Longest notification retry delay"
    )
    subscription_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Seconds one notification may take in all (name lookup, connecting, sending,"
        " the answer's status line and headers): a receiver trickling bytes is cut off then",
    )
    subscription_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a deliverer's hold on a subscription outlasts the notification it"
        " is sending (renewed before each); if the deliverer dies another resumes after it",
    )
    subscription_allow_private: bool = Field(
        default=False,
        description="Let subscription endpoints be loopback, private, link-local or reserved"
        " addresses (tests; a closed network). Off, such endpoints are refused at registration"
        " and at sending, so a Subscription cannot reach into the server's own network",
    )

    # -- prescription PDFs and QR codes (documents/) ----------------------------------------
    documents_templates_dir: Path | None = Field(
        default=None,
        description="A clinic's prescription template folder (prescription.html), used first",
    )
    clinic_logo: Path | None = Field(
        default=None, description="PNG, JPEG or SVG logo printed on prescriptions"
    )
    brand_color: str = Field(
        default="#1f4e79",
        pattern=r"^#[0-9A-Fa-f]{6}$",
        description="Colour of headings and rules on prescriptions (#rrggbb)",
    )
    accent_color: str = Field(
        default="#e8eef5",
        pattern=r"^#[0-9A-Fa-f]{6}$",
        description="Background of shaded boxes on prescriptions (#rrggbb)",
    )
    paper_size: str = Field(
        default="A4",
        pattern="^(A4|letter)$",
        description="Prescription paper: A4 or letter (`?paper=` overrides per request)",
    )
    qr_link_seconds: int = Field(
        default=90 * 24 * 3600, gt=0, description="Lifetime of the verification link in a QR code"
    )
    link_key_file: Path | None = Field(
        default=None,
        description="Secret signing QR verification links; default data_dir/keys/links.key",
    )
    document_cache_bytes: int = Field(
        default=64 * 1024 * 1024, ge=0, description="Memory for rendered PDFs per worker (0: none)"
    )

    # -- Bulk Data export (export/) ----------------------------------------------------------
    export_expiry_seconds: int = Field(
        default=24 * 3600, description="How long finished $export files are kept"
    )
    export_lease_seconds: float = Field(
        default=300.0, description="How long an export worker may go silent before another resumes"
    )

    @property
    def fhir_base(self) -> str:
        return self.base_url.rstrip("/") + "/fhir"


settings = Settings()


def markdown_table() -> str:
    """The README's configuration table, made from the fields above (`python -m
    vitasync_fhir.config`); tests/test_readme.py keeps README equal to it."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        default = (
            "(unset)"
            if value is None
            else f"`{json.dumps(value) if isinstance(value, list) else value}`"
        )
        rows.append(f"| `VITASYNC_{name.upper()}` | {default} | {field.description or ''} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
