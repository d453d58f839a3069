"""Values at the edges of what the types hold, each once a 500 (review, session 8): the last
code point, a character before the surrogates, the first and last instants of the calendar with
extreme zones, numbers that are digits only in Unicode, integers past 64 bits, odd shapes in
bodies. Each must answer a 2xx or a clean 4xx, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json

import pytest
from factories import FHIR_JSON, create, patient

LAST = "\U0010ffff"
BEFORE_SURROGATES = "\ud7ff"
HUGE_CURSOR = base64.urlsafe_b64encode(
    json.dumps({"s": "x", "k": [18446744073709551615, "x"]}).encode()
).decode()

SEARCHES = [
    ("Patient", {"_count": "²"}),
    ("Patient", {"name": LAST}),
    ("Patient", {"name": "ab" + LAST}),
    ("Patient", {"name": BEFORE_SURROGATES}),
    ("Patient", {"family": "x" + BEFORE_SURROGATES}),
    ("Observation", {"code:text": LAST}),
    ("Observation", {"value-string": LAST}),
    ("Observation", {"subject.name": LAST}),
    ("Patient", {"_lastUpdated": "9999"}),
    ("Patient", {"_lastUpdated": "gt9999"}),
    ("Patient", {"_lastUpdated": "le9999-12-31"}),
    ("Patient", {"_lastUpdated": "9999-12-31T23:59:59.999999Z"}),
    ("Patient", {"_lastUpdated": "sa9999-12-31T23:59:59Z"}),
    ("Patient", {"_lastUpdated": "ap0001"}),
    ("Patient", {"_lastUpdated": "ap9999"}),
    ("Patient", {"_lastUpdated": "9999-12-31T23:59-14:00"}),
    ("Patient", {"_lastUpdated": "0001-01-01T00:00+14:00"}),
    ("Observation", {"subject._lastUpdated": "gt9999"}),
    ("Patient", {"_has:Observation:patient:_lastUpdated": "ap0001"}),
    ("Patient", {"_sort": "birthdate", "_count": "1", "_cursor": HUGE_CURSOR}),
]


@pytest.mark.parametrize(("resource_type", "params"), SEARCHES, ids=lambda v: repr(v)[:40])
def test_edge_values_in_searches(client, resource_type: str, params: dict) -> None:
    answer = client.get(f"/fhir/{resource_type}", params=params)
    assert answer.status_code in (200, 400), answer.text
    assert answer.json()["resourceType"] in ("Bundle", "OperationOutcome")


def test_edge_values_elsewhere(client) -> None:
    pid = create(client, patient(family="Edge"))["id"]
    answers = {
        "vread ²": client.get(f"/fhir/Patient/{pid}/_history/²"),
        "history cursor ²": client.get("/fhir/_history", params={"_cursor": "²"}),
        "everything since year 1": client.get(
            f"/fhir/Patient/{pid}/$everything", params={"_since": "0001-01-01T00:00:00+14:00"}
        ),
        "everything since 9999": client.get(
            f"/fhir/Patient/{pid}/$everything", params={"_since": "9999-12-31T23:59:59-14:00"}
        ),
        "api page ²": client.get("/api/patients", params={"page": "²"}),
        "api huge page": client.get("/api/patients", params={"page": "99999999999999999999"}),
        "read since -0000": client.get(
            f"/fhir/Patient/{pid}", headers={"If-Modified-Since": "Sat, 01 Jan 2050 00:00:00 -0000"}
        ),
        "validate parameter 5": client.post(
            "/fhir/Patient/$validate",
            json={"resourceType": "Parameters", "parameter": 5},
            headers=FHIR_JSON,
        ),
        "conditional update 9999": client.put(
            "/fhir/Patient",
            params={"_lastUpdated": "9999"},
            json={"resourceType": "Patient"},
            headers=FHIR_JSON,
        ),
    }
    for case in ("data 5", "patch to a number"):
        data = (
            5
            if case == "data 5"
            else base64.b64encode(
                json.dumps([{"op": "replace", "path": "", "value": 7}]).encode()
            ).decode()
        )
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {
                        "resourceType": "Binary",
                        "contentType": "application/json-patch+json",
                        "data": data,
                    },
                    "request": {"method": "PATCH", "url": f"Patient/{pid}"},
                }
            ],
        }
        answers[case] = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    wrong = {
        name: (a.status_code, a.text[:200]) for name, a in answers.items() if a.status_code >= 500
    }
    assert not wrong
    assert answers["read since -0000"].status_code == 304
    assert answers["api huge page"].status_code == 400


@pytest.mark.parametrize("email", ["é@example.org", "<a@b.org>", "a@b.org>", "a@"])
def test_an_address_no_mail_server_takes_is_refused_at_sign_up(anonymous, email: str) -> None:
    answer = anonymous.post(
        "/api/auth/register", json={"email": email, "password": "a long passphrase 9"}
    )
    assert answer.status_code in (400, 422), answer.text
    assert set(answer.json()) == {"error", "detail"}


def test_a_booking_survives_an_unusable_address_and_refuses_an_odd_time(client) -> None:
    """A patient whose e-mail (a FHIR telecom, anybody's typing) no server would take is booked
    without the e-mail; a start no clock shows is refused. Both were 500s."""
    pid = create(
        client,
        {
            "resourceType": "Patient",
            "name": [{"family": "Odd"}],
            "telecom": [{"system": "email", "value": "odd@"}],
        },
    )["id"]
    doctor = create(client, {"resourceType": "Practitioner", "name": [{"family": "Who"}]})["id"]
    slot = {
        "patient_id": pid,
        "doctor_id": doctor,
        "start": "2031-03-04T09:30:00Z",
        "end": "2031-03-04T10:00:00Z",
    }
    booked = client.post("/api/appointments", json=slot)
    assert booked.status_code == 201, booked.text
    leap = client.post(
        "/api/appointments",
        json={**slot, "start": "2031-06-30T23:59:60Z", "end": "2031-07-01T00:30:00Z"},
    )
    assert leap.status_code in (400, 422), leap.text
    assert set(leap.json()) == {"error", "detail"}
    again = client.post("/api/appointments", json=slot)  # the same doctor, the same time
    assert again.status_code == 409, again.text


def _bundle(kind: str, entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def test_odd_bundle_entries_are_refused_cleanly(client) -> None:
    pid = create(client, patient(family="Entries"))["id"]
    odd_patch = {
        "resource": {
            "resourceType": "Binary",
            "contentType": "application/json-patch+json",
            "data": 1,
        },
        "request": {"method": "PATCH", "url": f"Patient/{pid}"},
    }
    post = {
        "resource": {"resourceType": "Patient", "name": [{"family": "BatchPartial"}]},
        "request": {"method": "POST", "url": "Patient"},
    }
    answer = client.post("/fhir", json=_bundle("batch", [post, odd_patch]), headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"][:3] for e in answer.json()["entry"]]
    assert statuses == ["201", "400"]

    for name, value in (("ifMatch", 5), ("ifNoneExist", ["identifier=x"])):
        entry = {
            "resource": {"resourceType": "Patient", "id": pid},
            "request": {"method": "PUT", "url": f"Patient/{pid}", name: value},
        }
        answer = client.post("/fhir", json=_bundle("transaction", [entry]), headers=FHIR_JSON)
        assert answer.status_code == 400, answer.text

    same = [
        {
            "resource": {"resourceType": "Patient", "id": "same1"},
            "request": {"method": "PUT", "url": f"Patient?identifier=q{n}"},
        }
        for n in (1, 2)
    ]
    answer = client.post("/fhir", json=_bundle("transaction", same), headers=FHIR_JSON)
    assert answer.status_code == 400 and "changes a resource once" in answer.text, answer.text
    assert client.get("/fhir/Patient/same1").status_code == 404

    unknown = {"request": {"method": "GET", "url": "metadata"}}
    answer = client.post("/fhir", json=_bundle("transaction", [unknown]), headers=FHIR_JSON)
    assert answer.status_code in (400, 404) and "Bundle.entry[0]" in answer.text, answer.text


def test_more_odd_values(client) -> None:
    pid = create(client, patient(family="More"))["id"]
    near = client.get("/fhir/Location", params={"near:missing": "true"})
    assert near.status_code == 400, near.text
    huge = client.get(f"/fhir/Patient/{pid}/_history/99999999999999999999")
    assert huge.status_code == 404, huge.text
    doctor = create(client, {"resourceType": "Practitioner", "name": [{"family": "Early"}]})["id"]
    early = client.post(
        "/api/appointments",
        json={
            "patient_id": pid,
            "doctor_id": doctor,
            "start": "0001-01-01T00:00:00Z",
            "end": "0001-01-01T00:30:00Z",
        },
    )
    assert early.status_code < 500, early.text


def test_history_since_reads_the_zone(client) -> None:
    """`_since` with an offset was compared as if its clock time were UTC (on SQLite)."""
    pid = create(client, patient(family="Since"))["id"]
    written = client.get(f"/fhir/Patient/{pid}").json()["meta"]["lastUpdated"]
    from datetime import datetime, timedelta, timezone

    moment = datetime.fromisoformat(written.replace("Z", "+00:00")) - timedelta(seconds=1)
    east = moment.astimezone(timezone(timedelta(hours=5))).isoformat()
    found = client.get(f"/fhir/Patient/{pid}/_history", params={"_since": east}).json()
    assert len(found.get("entry", [])) == 1, (east, found)
    later = (moment + timedelta(seconds=5)).astimezone(timezone(timedelta(hours=-5))).isoformat()
    found = client.get(f"/fhir/Patient/{pid}/_history", params={"_since": later}).json()
    assert found.get("entry", []) == []


def test_a_batch_entry_that_fails_unexpectedly_answers_for_itself(client, monkeypatch) -> None:
    """A bug in one entry (here made to happen) must not answer 500 for the whole batch after
    the entries before it were committed: the client could not tell what was applied."""
    from vitasync_fhir.fhir import bundles

    original = bundles.Transaction._rewrite

    async def rewrite(self, resource: dict, *rest) -> dict:  # type: ignore[no-untyped-def]
        if (resource.get("name") or [{}])[0].get("family") == "Boom":
            raise RuntimeError("a bug")
        return await original(self, resource, *rest)

    monkeypatch.setattr(bundles.Transaction, "_rewrite", rewrite)
    entries = [
        {
            "resource": {"resourceType": "Patient", "name": [{"family": family}]},
            "request": {"method": "POST", "url": "Patient"},
        }
        for family in ("BeforeBoom", "Boom", "AfterBoom")
    ]
    answer = client.post("/fhir", json=_bundle("batch", entries), headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"][:3] for e in answer.json()["entry"]]
    assert statuses == ["201", "500", "201"]
    for family, count in (("BeforeBoom", 1), ("Boom", 0), ("AfterBoom", 1)):
        found = client.get("/fhir/Patient", params={"family:exact": family, "_total": "accurate"})
        assert found.json()["total"] == count


def test_full_urls_name_one_entry_each_and_a_put_can_be_referred_to(client) -> None:
    twice = [
        {
            "fullUrl": "urn:uuid:5d8a4c1e-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Patient", "name": [{"family": f"Twin{n}"}]},
            "request": {"method": "POST", "url": "Patient"},
        }
        for n in (1, 2)
    ]
    answer = client.post("/fhir", json=_bundle("transaction", twice), headers=FHIR_JSON)
    assert answer.status_code == 400 and "Bundle.entry[1]" in answer.text, answer.text

    put_url = "urn:uuid:5d8a4c1e-0000-4000-8000-000000000002"
    entries = [
        {
            "fullUrl": put_url,
            "resource": {"resourceType": "Patient", "id": "put-by-id-1"},
            "request": {"method": "PUT", "url": "Patient/put-by-id-1"},
        },
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": put_url},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    ]
    answer = client.post("/fhir", json=_bundle("transaction", entries), headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    observation_url = answer.json()["entry"][1]["response"]["location"]
    observation_id = observation_url.split("/Observation/")[1].split("/")[0]
    stored = client.get(f"/fhir/Observation/{observation_id}").json()
    assert stored["subject"]["reference"] == "Patient/put-by-id-1"
