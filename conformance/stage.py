"""The stage the scenarios play on: a fresh database, seeded through `vitasync-fhir import`, the
accounts and OAuth clients partners would be given (made with `vitasync-fhir create-user` and
`create-client`), and a real `vitasync-fhir serve` process on a free port.

Everything is done through the server's own command line, as an operator would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from sqlalchemy import create_engine, text

from vitasync_fhir.db import sync_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYNTHEA = ROOT.parent / "shared" / "data" / "synthea-r4"
# Loaded by `import` before the server starts; Clemente's bundle is left for scenario (d).
SEEDED = ("practitionerInformation", "hospitalInformation", "Buster_Hoeger", "Liz_Conn")
POSTED = "Clemente_Kreiger"
REDIRECT_URI = "http://127.0.0.1:9/callback"
PASSWORD = "conformance passphrase"


@dataclass
class Service:
    """A SMART backend service: its client id and the file holding its private key."""

    client_id: str
    key_file: str
    kid: str
    scope: str


@dataclass
class Stage:
    base: str
    fhir: str
    database_url: str
    out: str  # folder of NDJSON files: every resource the server returned, for the validator
    synthea: str
    bulk: Service
    ehr: Service
    pharmacy: Service
    app_client_id: str
    redirect_uri: str
    patient_email: str
    patient_password: str
    patient_id: str
    other_patient_id: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> Stage:
        data = json.loads(path.read_text())
        for name in ("bulk", "ehr", "pharmacy"):
            data[name] = Service(**data[name])
        return cls(**data)


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "vitasync_fhir.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=env["VITASYNC_DATA_DIR"],
    )
    if done.returncode != 0:
        raise RuntimeError(f"vitasync-fhir {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _service(env: dict[str, str], folder: Path, name: str, *, role: str, scope: str) -> Service:
    private = ec.generate_private_key(ec.SECP384R1())
    key_file = folder / f"{name}.pem"
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = ECKey.import_key(private.public_key())
    kid = public.thumbprint()
    jwks = folder / f"{name}.jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public.as_dict(private=False), "kid": kid}]}))
    client_id = f"conformance-{name}"
    cli(
        env,
        "create-client",
        "--name",
        f"Conformance {name}",
        "--scope",
        scope,
        "--jwks-file",
        str(jwks),
        "--role",
        role,
        "--client-id",
        client_id,
    )
    return Service(client_id=client_id, key_file=str(key_file), kid=kid, scope=scope)


def _patient_ids(database_url: str) -> tuple[str, str]:
    """Buster's Patient id (the app's user) and Liz's (someone the app must not see)."""
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT id, content FROM resources WHERE resource_type = 'Patient'")
            ).all()
    finally:
        engine.dispose()
    by_family = {json.loads(c)["name"][0]["family"]: i for i, c in rows}
    return by_family["Hoeger"], by_family["Conn"]


def prepare(folder: Path, *, database_url: str | None, synthea: Path, port: int) -> tuple:
    """Build the database and the accounts; the environment `serve` needs and the Stage."""
    (folder / "var").mkdir(parents=True, exist_ok=True)
    (folder / "out").mkdir(exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    url = database_url or f"sqlite:///{folder / 'conformance.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITASYNC_")}
    env.update(
        VITASYNC_DATABASE_URL=url,
        VITASYNC_BASE_URL=base,
        VITASYNC_DATA_DIR=str(folder / "var"),
    )
    cli(env, "migrate")
    seeds = [str(p) for name in SEEDED for p in sorted(synthea.glob(f"{name}*.json"))]
    cli(env, "import", "--quiet", *seeds)
    bulk = _service(env, folder, "bulk", role="admin", scope="system/*.rs")
    ehr = _service(env, folder, "ehr", role="admin", scope="system/*.cruds")
    pharmacy = _service(
        env,
        folder,
        "pharmacy",
        role="pharmacist",
        scope="system/MedicationRequest.rus system/MedicationDispense.crus "
        "system/Medication.rs system/Patient.rs",
    )
    app = json.loads(
        cli(
            env,
            "create-client",
            "--name",
            "Conformance patient app",
            "--scope",
            "openid fhirUser launch/patient patient/*.rs offline_access",
            "--redirect-uri",
            REDIRECT_URI,
        )
    )
    patient_id, other_id = _patient_ids(url)
    email = "buster@example.org"
    cli(
        env,
        "create-user",
        "--email",
        email,
        "--password",
        PASSWORD,
        "--role",
        "patient",
        "--fhir-id",
        patient_id,
    )
    stage = Stage(
        base=base,
        fhir=f"{base}/fhir",
        database_url=url,
        out=str(folder / "out"),
        synthea=str(next(synthea.glob(f"{POSTED}*.json"))),
        bulk=bulk,
        ehr=ehr,
        pharmacy=pharmacy,
        app_client_id=app["client_id"],
        redirect_uri=REDIRECT_URI,
        patient_email=email,
        patient_password=PASSWORD,
        patient_id=patient_id,
        other_patient_id=other_id,
    )
    return env, stage


@contextmanager
def serving(env: dict[str, str], port: int, log: Path) -> Iterator[None]:
    """`vitasync-fhir serve` until the block ends (its output goes to `log`)."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "vitasync_fhir.cli", "serve", "--port", str(port)],
            env=env,
            cwd=env["VITASYNC_DATA_DIR"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait(process, f"http://127.0.0.1:{port}/fhir/metadata", log)
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait(process: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server did not answer within 90 s:\n{log.read_text()}")
