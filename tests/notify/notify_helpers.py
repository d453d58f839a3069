"""Helpers of the e-mail tests: the SMTP server and its inbox, certificates, settings, worker
processes, a Redis of a test's own, and factories."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from uuid import uuid4

import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from live import free_port
from sqlalchemy import select

from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, unit_of_work
from vitasync_fhir.notify import queue as queue_module
from vitasync_fhir.notify.outbox import enqueue
from vitasync_fhir.notify.tables import outbox

REDIS_URL = os.environ.get("VITASYNC_TEST_REDIS", "redis://127.0.0.1:6379/5")
SMTP_USER = "mailer"
SMTP_PASSWORD = "s3cret-password"
ROOT = Path(__file__).resolve().parents[2]


# -- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what the mailer trusts (smtp_ca_file)
    cert: Path  # the server's chain, signed by `ca`, for 127.0.0.1 and localhost
    key: Path
    rogue_cert: Path  # a self-signed certificate nobody trusts
    rogue_key: Path

    def server_context(self, *, rogue: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if rogue:
            context.load_cert_chain(self.rogue_cert, self.rogue_key)
        else:
            context.load_cert_chain(self.cert, self.key)
        return context


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if not ca or issuer is None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certificates(folder: Path) -> Certificates:
    """A test CA, a server certificate it signed, and a rogue self-signed one."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("VitaSync Test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = certificate(
        "127.0.0.1", server_key, issuer=("VitaSync Test CA", ca_key), ca=False
    )
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_cert = certificate("127.0.0.1", rogue_key, ca=True)  # self-signed, for 127.0.0.1
    pem = serialization.Encoding.PEM
    files = Certificates(
        ca=folder / "ca.pem",
        cert=folder / "server.pem",
        key=folder / "server.key",
        rogue_cert=folder / "rogue.pem",
        rogue_key=folder / "rogue.key",
    )
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.cert.write_bytes(server_cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    write_key(files.key, server_key)
    files.rogue_cert.write_bytes(rogue_cert.public_bytes(pem))
    write_key(files.rogue_key, rogue_key)
    return files


# -- the SMTP server ----------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    authenticated: bool

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"]).strip()

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return part.get_content() if part else ""

    @property
    def html(self) -> str:
        part = self.message.get_body(preferencelist=("html",))
        return part.get_content() if part else ""


@dataclass
class Gate:
    """Holds the SMTP conversation at `stage` ("rcpt", or "data" after storing the message)."""

    stage: str
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def hold(self) -> None:
        self.reached.set()
        while not self.release.is_set():
            await asyncio.sleep(0.02)


def _encrypted(server, session) -> bool:  # type: ignore[no-untyped-def]
    """STARTTLS done, or implicit TLS (which aiosmtpd does not record in the session)."""
    return session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None


class Inbox:
    """The aiosmtpd handler: keeps what arrives, and can refuse or hold on request."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.auth_calls: list[tuple[str, bool]] = []
        self.rcpt_reply: str | None = None  # e.g. "451 4.3.0 Try again later"
        self.gate: Gate | None = None
        self._lock = threading.Lock()

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
        with self._lock:
            self.auth_calls.append((mechanism, _encrypted(server, session)))
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode() == SMTP_USER and auth_data.password.decode() == SMTP_PASSWORD
        )
        return AuthResult(success=ok)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]  # noqa: N802
        if self.gate and self.gate.stage == "rcpt":
            await self.gate.hold()
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
        arrival = Received(
            mail_from=envelope.mail_from,
            rcpt_tos=list(envelope.rcpt_tos),
            message=message,
            tls=_encrypted(server, session),
            authenticated=bool(session.authenticated),
        )
        with self._lock:
            self.received.append(arrival)  # a real MTA commits the message before it answers
        if self.gate and self.gate.stage == "data":
            await self.gate.hold()
        return "250 2.0.0 Message accepted for delivery"

    def by_message_id(self) -> dict[str, list[Received]]:
        found: dict[str, list[Received]] = {}
        for arrival in list(self.received):
            found.setdefault(arrival.message_id, []).append(arrival)
        return found


class SmtpServer:
    """aiosmtpd on 127.0.0.1:port in a mode: starttls (required), tls (implicit) or stripped
    (plaintext, no STARTTLS offered, AUTH allowed in the clear: what a downgrade attacker shows)."""

    def __init__(self, certificates: Certificates, *, mode: str = "starttls", rogue: bool = False):
        self.inbox = Inbox()
        self.port = free_port()
        self.mode = mode
        self.certificates = certificates
        self.rogue = rogue
        self.controller: Controller | None = None

    def start(self) -> SmtpServer:
        options: dict = {"auth_required": True, "authenticator": self.inbox.authenticate}
        context = self.certificates.server_context(rogue=self.rogue)
        if self.mode == "starttls":
            options.update(tls_context=context, require_starttls=True, auth_require_tls=True)
        elif self.mode == "tls":
            # aiosmtpd counts only STARTTLS as TLS for AUTH; here the socket is TLS from byte one.
            options.update(ssl_context=context, auth_require_tls=False)
        else:
            options.update(auth_require_tls=False)
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **options)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def settings(self, base: Settings, **extra: object) -> Settings:
        """`base` sending through this server, trusting the test CA."""
        values: dict = {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "smtp_user": SMTP_USER,
            "smtp_password": SMTP_PASSWORD,
            "smtp_security": "tls" if self.mode == "tls" else "starttls",
            "smtp_ca_file": self.certificates.ca,
        }
        values.update(extra)
        return notify_settings(base, **values)


# -- settings, queues, consumers ------------------------------------------------------------------


FAST = {
    "notify_backoff_seconds": 0.3,
    "notify_backoff_max_seconds": 2.0,
    "notify_lease_seconds": 30.0,
    "notify_relay_grace_seconds": 1.0,
    "smtp_timeout": 10.0,
    "smtp_from": "VitaSync Clinic <no-reply@clinic.test>",
    "clinic_name": "Riverside Clinic",
    "clinic_address": "1 River Road, Springfield",
    "clinic_phone": "+1 555 0100",
}

MADE_SETTINGS: list[Settings] = []


def notify_settings(base: Settings, **values: object) -> Settings:
    """Settings for one test: its own queue name, fast retries; validated like the real thing."""
    data = {k: v for k, v in base.model_dump().items() if k != "smtp_password"}
    if base.smtp_password is not None:
        data["smtp_password"] = base.smtp_password.get_secret_value()
    data.update({"queue_name": f"test-{uuid4().hex[:12]}", **FAST, **values})
    made = Settings(**data)
    MADE_SETTINGS.append(made)
    return made


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITASYNC_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"VITASYNC_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """`python -m vitasync_fhir.notify.commands worker` as a child process we can kill."""

    def __init__(self, settings: Settings, cwd: Path) -> None:
        self.settings = settings
        self.cwd = cwd
        self.log = cwd / f"worker-{uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        handle = open(self.log, "ab")  # noqa: SIM115 - the child owns it until it exits
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vitasync_fhir.notify.commands", "worker", "--workers", "1"],
            cwd=self.cwd,
            env={**settings_env(self.settings), "PYTHONPATH": str(ROOT)},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class RedisServer:
    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "yes",
                "--dir", str(self.folder),
                "--pidfile", str(self.folder / "redis.pid"),
                "--logfile", str(self.folder / "redis.log"),
            ],
            check=True,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_until(lambda: _pings(client), timeout=10, what="the test Redis to start")

    def stop(self) -> None:
        """Stop this test's own Redis (never the shared one) by the pid it wrote."""
        pidfile = self.folder / "redis.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().strip())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        wait_until(lambda: not _alive(pid), timeout=10, what="the test Redis to stop")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- helpers ------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], *, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")


class Rollback(Exception):
    pass


def commit_emails(settings: Settings, emails: list[dict], *, roll_back: bool = False) -> None:
    """Enqueue `emails` in one real unit of work, as a route would; roll it back if asked."""

    async def run() -> None:
        database = Database(settings)
        try:
            async with database.sessions(info={"settings": settings}) as session:
                async with unit_of_work(session):
                    for email in emails:
                        await enqueue(session, **email)
                    if roll_back:
                        raise Rollback
        except Rollback:
            pass
        finally:
            await database.dispose()

    asyncio.run(run())


def email(kind: str = "appointment-created", *, to: str = "jane@example.org", **context) -> dict:
    """A plain factory of one enqueue call."""
    ident = context.pop("appointment_id", uuid4().hex[:10])
    dedup_key = context.pop("dedup_key", None) or f"{kind}:{ident}:{uuid4().hex[:6]}"
    defaults: dict = {
        "appointment_id": ident,
        "start": "2030-03-04T09:30:00+00:00",
        "end": "2030-03-04T10:00:00+00:00",
        "name": "Jane Doe",
        "doctor_name": "Dr Ada Lovelace",
        "doctor_phone": "+1 555 0199",
    }
    if kind in ("registration", "password-reset"):
        key = "verify_url" if kind == "registration" else "reset_url"
        defaults = {"name": "Jane Doe", key: f"https://app.test/{kind}?token={uuid4().hex}"}
    return {
        "kind": kind,
        "to": to,
        "context": {**defaults, **context},
        "dedup_key": dedup_key,
    }


def aware(moment: dt.datetime) -> dt.datetime:
    """SQLite gives back naive datetimes; the outbox stores UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def rows(settings: Settings) -> list:
    engine = queue_module.queue_for(settings).engine
    with engine.connect() as conn:
        return list(conn.execute(select(outbox).order_by(outbox.c.id)))
