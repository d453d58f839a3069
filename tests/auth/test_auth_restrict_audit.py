"""`restrict` as SQL on real data (SQLite and PostgreSQL), and AuditEvents the store accepts."""

from __future__ import annotations

import orjson
from auth_helpers import PASSWORD
from factories import create, observation, patient
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from vitasync_fhir.auth import audit, policy
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.auth.scopes import Scope, parse
from vitasync_fhir.fhir import validation
from vitasync_fhir.fhir.tables import resources


def visible(run, caller: Caller, resource_type: str) -> set[str]:  # type: ignore[no-untyped-def]
    clause = policy.restrict(caller, resource_type)

    async def work(session):  # type: ignore[no-untyped-def]
        query = select(resources.c.id).where(resources.c.resource_type == resource_type)
        if clause is not None:
            query = query.where(clause(resources))
        return {row.id for row in await session.execute(query)}

    return run(work)


def test_restrict_limits_selections_to_the_compartment(client: TestClient, run) -> None:  # type: ignore[no-untyped-def]
    mine = create(client, patient(family="Mine"))["id"]
    theirs = create(client, patient(family="Theirs"))["id"]
    my_obs = create(client, observation(patient_ref=f"Patient/{mine}"))["id"]
    their_obs = create(client, observation(patient_ref=f"Patient/{theirs}"))["id"]
    everyone = Scope("user", "*", "cruds")

    me = Caller(role="patient", scopes=(everyone,), user_id="u", patient_id=mine)
    assert visible(run, me, "Observation") == {my_obs}
    assert visible(run, me, "Patient") == {mine}

    doctor = Caller(role="doctor", scopes=(everyone,), user_id="d")
    assert visible(run, doctor, "Observation") == {my_obs, their_obs}

    launched = Caller(
        role="doctor", scopes=parse("patient/*.rs").resources, user_id="d", patient_id=theirs
    )
    assert visible(run, launched, "Observation") == {their_obs}
    assert visible(run, launched, "Patient") == {theirs}

    pharmacist = Caller(role="pharmacist", scopes=(everyone,), user_id="p")
    assert visible(run, pharmacist, "Observation") == set()
    assert visible(run, pharmacist, "Patient") == {mine, theirs}


def test_audit_events_are_valid_fhir(client: TestClient, run, settings) -> None:  # type: ignore[no-untyped-def]
    caller = Caller(
        role="doctor",
        scopes=(),
        user_id="u1",
        fhir_user="Practitioner/pr1",
        client_id="app",
        jti="0b0d8c3e-1c41-4f5e-9a3e-0d5c9bb1b3b2",
    )
    allowed = audit.audit_event(
        caller,
        action="search",
        resource_type="Observation",
        resource_id=None,
        outcome="success",
        source_ip="203.0.113.9",
        query="subject=Patient/p1&code=8867-4",
        patient_id="p1",
    )
    denied = audit.audit_event(
        caller,
        action="read",
        resource_type="Patient",
        resource_id="p2",
        outcome="denied",
        source_ip="203.0.113.9",
        description="outside the caller's compartment",
    )

    assert validation.validate(allowed) == [] and validation.validate(denied) == []

    async def store(session):  # type: ignore[no-untyped-def]
        return [await audit.record(session, allowed), await audit.record(session, denied)]

    ids = run(store)
    read = client.get(f"/fhir/AuditEvent/{ids[0]}")
    assert read.status_code == 200
    event = read.json()
    assert event["action"] == "E" and event["outcome"] == "0"
    assert event["agent"][0]["who"] == {"reference": "Practitioner/pr1"}
    assert event["agent"][0]["network"] == {"address": "203.0.113.9", "type": "2"}
    assert {"reference": "Patient/p1"} in [e.get("what") for e in event["entity"]]
    second = client.get(f"/fhir/AuditEvent/{ids[1]}").json()
    assert second["outcome"] == "4" and second["outcomeDesc"] == "outside the caller's compartment"
    assert second["entity"][0]["what"] == {"reference": "Patient/p2"}

    stored = audit.audit_event(
        None,
        action="read",
        resource_type="Patient",
        resource_id="p3",
        outcome="denied",
        source_ip=None,
    )
    new_id = _record_apart(settings, stored)
    assert client.get(f"/fhir/AuditEvent/{new_id}").json()["agent"][0]["who"] == {
        "display": "anonymous"
    }


def _record_apart(settings, event: dict) -> str:  # type: ignore[no-untyped-def]
    import asyncio

    from vitasync_fhir.db import Database

    async def main() -> str:
        database = Database(settings)
        try:
            return await audit.record_apart(database, event)
        finally:
            await database.dispose()

    return asyncio.run(main())


def test_cli_creates_users_and_clients(settings, tmp_path, monkeypatch, run) -> None:  # type: ignore[no-untyped-def]
    import typer
    from joserfc.jwk import RSAKey

    from vitasync_fhir.auth import accounts, commands, oauth

    monkeypatch.setenv("VITASYNC_DATABASE_URL", settings.database_url)
    cli = typer.Typer()
    cli.command("create-user")(commands.create_user)
    cli.command("create-client")(commands.create_client)
    runner = CliRunner()

    made = runner.invoke(
        cli,
        ["create-user", "--email", "Dr@Example.org", "--password", PASSWORD, "--role", "doctor"],
    )
    assert made.exit_code == 0, made.output
    assert orjson.loads(made.output)["fhirUser"].startswith("Practitioner/")
    bad_role = runner.invoke(
        cli, ["create-user", "--email", "x@example.org", "--password", PASSWORD, "--role", "wizard"]
    )
    assert bad_role.exit_code == 1 and "role" in bad_role.output

    key = RSAKey.generate_key(2048)
    pem = tmp_path / "partner.pem"
    pem.write_bytes(key.as_pem(private=False))
    backend = runner.invoke(
        cli,
        ["create-client", "--name", "Partner", "--scope", "system/*.rs", "--role", "doctor",
         "--public-key-file", str(pem), "--client-id", "partner-ehr"],
    )  # fmt: skip
    assert backend.exit_code == 0, backend.output
    assert orjson.loads(backend.output)["token_endpoint_auth_method"] == "private_key_jwt"
    private = tmp_path / "private.pem"
    private.write_bytes(key.as_pem(private=True))
    refused = runner.invoke(
        cli,
        ["create-client", "--name", "X", "--scope", "system/*.rs", "--role", "doctor",
         "--public-key-file", str(private)],
    )  # fmt: skip
    assert refused.exit_code == 1
    app = runner.invoke(
        cli,
        ["create-client", "--name", "App", "--scope", "launch/patient patient/*.rs",
         "--redirect-uri", "https://app.example.org/cb"],
    )  # fmt: skip
    assert app.exit_code == 0 and orjson.loads(app.output)["token_endpoint_auth_method"] == "none"

    async def check(session):  # type: ignore[no-untyped-def]
        user = await accounts.find_by_email(session, "dr@example.org")
        client = await oauth.get_client(session, "partner-ehr")
        return user, client

    user, client = run(check)
    assert user is not None and user.role == "doctor" and user.verified
    assert (
        client is not None
        and client.role == "doctor"
        and client.grant_types == ("client_credentials",)
    )
