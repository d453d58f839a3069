"""What every /api resource answers, whatever its mapping: not found, invalid, unauthenticated,
a created record readable through /fhir, and a role matrix from the policy table."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from vitasync_fhir.auth import policy
from vitasync_fhir.fhir.search import registry
from vitasync_fhir.mapping.spec import load_all

MAPPINGS = load_all()


@pytest.mark.parametrize("name", sorted(MAPPINGS))
def test_unknown_ids_invalid_bodies_and_missing_tokens(client, anonymous, name):  # type: ignore[no-untyped-def]
    assert client.get(f"/api/{name}/no-such-id").status_code == 404
    answer = client.post(f"/api/{name}", json={"no_such_field": 1})
    assert answer.status_code == 422
    fields = {item["field"] for item in answer.json()["detail"]}
    assert "no_such_field" in fields
    required = {f for f, spec in MAPPINGS[name].fields.items() if spec.required}
    assert required <= fields
    assert (
        client.post(
            f"/api/{name}", content=b"[]", headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )
    if name != "appointments":
        assert client.put(f"/api/{name}/no-such-id", json={}).status_code == 404
        assert client.delete(f"/api/{name}/no-such-id").status_code == 404
    assert anonymous.get(f"/api/{name}").status_code == 401


# A value the search cannot read, by the type of the FHIR parameter behind a filter.
BAD_FILTER_VALUES = {"date": "gege2020", "token": "a|b|c", "reference": "a/b/c", "string": "a\x00"}


@pytest.mark.parametrize("name", sorted(n for n, m in MAPPINGS.items() if m.listing.filters))
def test_bad_filter_values_name_the_api_parameter_and_the_value_sent(client, name):  # type: ignore[no-untyped-def]
    listing, fhir_type = MAPPINGS[name].listing, MAPPINGS[name].resource
    filters = {f: registry.param(fhir_type, p).type for f, p in listing.filters.items()}  # type: ignore[union-attr]
    filters.update(dict.fromkeys(("from", "to"), "date"))
    kinds = MAPPINGS[name].kinds
    for filter_name, kind in filters.items():
        if kinds and filter_name == kinds.field:
            continue  # a name from the kinds table, checked by name
        value = BAD_FILTER_VALUES[kind]
        answer = client.get(f"/api/{name}", params={filter_name: value})
        assert answer.status_code == 400, (filter_name, answer.text)
        body = answer.json()
        assert body["error"] == "bad_request" and len(body["detail"]) == 1, body
        assert body["detail"][0]["field"] == filter_name, body
        message = body["detail"][0]["message"]
        if kind == "string":
            assert message == f"{filter_name} cannot contain NUL characters", body
        else:
            assert message.startswith(f"{filter_name}: {value!r} is not "), body


def sample(client: TestClient, name: str, patient_id: str, doctor_id: str) -> dict:
    """A minimal valid body for each mapping, in `patient_id`'s compartment."""
    bodies = {
        "patients": {"family_name": "Sample"},
        "prescriptions": {"patient_id": patient_id, "medication": "Amoxicillin"},
        "vaccines": {"patient_id": patient_id, "vaccine": "Flu", "date": "2026-11-01T08:00:00Z"},
        "procedures": {"patient_id": patient_id, "name": "Suture"},
        "records": {"patient_id": patient_id},
        "vitals": {
            "kind": "heart_rate",
            "patient_id": patient_id,
            "effective": "2026-11-01T08:00:00Z",
            "value": 60,
        },
        "appointments": {
            "patient_id": patient_id,
            "doctor_id": doctor_id,
            "start": "2026-12-01T09:00:00Z",
            "end": "2026-12-01T09:30:00Z",
        },
    }
    return bodies[name]


def expected(
    caller: policy.Caller, fhir_type: str, interaction: str, whose: str
) -> tuple[int, ...]:
    ok = {"read": (200,), "search": (200,), "create": (201,), "update": (200,), "delete": (204,)}[
        interaction
    ]
    decision = policy.decide(caller, fhir_type, interaction)
    if not decision.allowed:
        return (403,)
    limited = decision.patient_id is not None and policy.in_compartment_types(fhir_type)
    if not limited or whose == "own":
        return ok
    return (403,) if interaction == "create" else (404,)


@pytest.mark.parametrize("role", policy.ROLES)
def test_role_matrix_through_api(client, anonymous, signed_in, role):  # type: ignore[no-untyped-def]
    own = client.post("/api/patients", json={"family_name": "Own"}).json()["id"]
    other = client.post("/api/patients", json={"family_name": "Other"}).json()["id"]
    doctor = client.post(
        "/fhir/Practitioner",
        json={"resourceType": "Practitioner", "name": [{"family": "House"}]},
        headers={"Content-Type": "application/fhir+json"},
    ).json()["id"]
    headers = signed_in(role=role, patient_id=own if role == "patient" else None)
    caller = policy.Caller(
        role=role,
        scopes=policy.ceiling(role, ["user"]),
        patient_id=own if role == "patient" else None,
    )
    failures = []
    for name, mapping in sorted(MAPPINGS.items()):
        fhir_type = mapping.resource
        made = {}
        for whose, pid in (("own", own), ("other", other)):
            if name == "patients":
                made[whose] = pid
                continue
            body = sample(client, name, pid, doctor)
            if name == "appointments":  # one doctor, one slot each
                body = {
                    **body,
                    "start": f"2026-12-0{1 if whose == 'own' else 2}T09:00:00Z",
                    "end": f"2026-12-0{1 if whose == 'own' else 2}T09:30:00Z",
                }
            made[whose] = client.post(f"/api/{name}", json=body).json()["id"]
        checks = [
            ("read", whose, anonymous.get(f"/api/{name}/{rid}", headers=headers))
            for whose, rid in made.items()
        ]
        listed = anonymous.get(f"/api/{name}?per_page=100", headers=headers)
        checks.append(("search", "own", listed))
        if listed.status_code == 200:
            found = {item["id"] for item in listed.json()["items"]}
            visible = {
                rid
                for whose, rid in made.items()
                if expected(caller, fhir_type, "read", whose) == (200,)
            }
            if not visible <= found or (made["other"] in found and made["other"] not in visible):
                failures.append(f"list {name}: found {found}, policy shows {visible}")
        if name != "patients":
            for whose, pid in (("own", own), ("other", other)):
                body = sample(client, name, pid, doctor)
                if name == "appointments":
                    body = {
                        **body,
                        "start": f"2026-12-1{1 if whose == 'own' else 2}T09:00:00Z",
                        "end": f"2026-12-1{1 if whose == 'own' else 2}T09:30:00Z",
                    }
                checks.append(
                    ("create", whose, anonymous.post(f"/api/{name}", json=body, headers=headers))
                )
        if name not in ("appointments", "patients"):
            for whose, rid in made.items():
                current = client.get(f"/api/{name}/{rid}").json()
                body = {
                    k: v for k, v in current.items() if k not in ("last_updated", "linked", "id")
                }
                checks.append(
                    (
                        "update",
                        whose,
                        anonymous.put(f"/api/{name}/{rid}", json=body, headers=headers),
                    )
                )
            for whose, rid in made.items():
                checks.append(
                    ("delete", whose, anonymous.delete(f"/api/{name}/{rid}", headers=headers))
                )
        for interaction, whose, answer in checks:
            want = expected(caller, fhir_type, interaction, whose)
            if answer.status_code not in want:
                got = f"got {answer.status_code}, policy says {want}"
                failures.append(f"{interaction} {name} {whose}: {got}: {answer.text[:120]}")
    assert not failures, "\n".join(failures)


def test_docs_work_without_internet(anonymous):
    page = anonymous.get("/docs")
    assert page.status_code == 200
    assert (
        "cdn" not in page.text.lower()
        and "https://" not in page.text.split("<body")[1].split("url:")[0]
    )
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        path = next(
            part.split('"')[0]
            for part in page.text.split('"/')
            if part.startswith("static") and asset in part.split('"')[0]
        )
        assert anonymous.get("/" + path).status_code == 200
    schema = anonymous.get("/openapi.json").json()
    assert "/api/prescriptions/{resource_id}/fill" in schema["paths"]
    create = schema["paths"]["/api/prescriptions"]["post"]
    assert "requestBody" in create and "201" in create["responses"]
