"""What a patient-limited caller may not see is not counted for them either: a history page and
its `next` link tell nothing of hidden versions, and a search's `_total=estimate` is no count of
the whole database.

Both were leaks found in review: empty history pages with a `next` link told a patient that, and
when, other patients' records were deleted, and the planner's estimate counted other patients'
Conditions and how often a code occurs in their Observations.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from factories import FHIR_JSON, create, observation, patient
from sqlalchemy import create_engine, event, text
from sqlalchemy.pool import NullPool

from vitasync_fhir.auth import tokens
from vitasync_fhir.fhir import history


def _people(client) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    own = create(client, patient(family="Own"))["id"]
    other = create(client, patient(family="SecretOther", given="Bob"))["id"]
    return own, other


def _as(kind: str, signed_in, settings, own: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A caller limited to `own`: the patient themselves, or a doctor's SMART app launched with
    `own` in context and patient/ scopes."""
    if kind == "patient":
        return signed_in(role="patient", patient_id=own)
    doctor = signed_in(role="doctor")  # only to make the account; the token is the app's
    subject = tokens.decode_access_token(settings, doctor["Authorization"][7:])["sub"]
    issued = tokens.issue_access_token(
        settings, subject=subject, scope="patient/*.rs launch/patient", patient=own
    )
    return {"Authorization": f"Bearer {issued.token}"}


def _condition(patient_id: str) -> dict:
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": {"text": "Bob's secret diagnosis"},
    }


def _pages(anonymous, url: str, headers: dict) -> list[list[tuple[str, str, str]]]:  # type: ignore[no-untyped-def]
    """Every page of a history, following `next`: each page's (method, url, etag) entries."""
    pages = []
    while url:
        answer = anonymous.get(url, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "total" not in body
        pages.append(
            [
                (e["request"]["method"], e["request"]["url"], e["response"]["etag"])
                for e in body.get("entry", [])
            ]
        )
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        assert len(pages) < 40, pages
    return pages


def _cursor(answer) -> str | None:  # type: ignore[no-untyped-def]
    for link in answer.json()["link"]:
        if link["relation"] == "next":
            return parse_qs(urlsplit(link["url"]).query)["_cursor"][0]
    return None


@pytest.mark.parametrize("kind", ["patient", "smart-app"])
def test_history_pages_tell_nothing_of_other_patients_deletions(
    client, anonymous, signed_in, settings, kind: str
) -> None:
    own, other = _people(client)
    me = _as(kind, signed_in, settings, own)
    first = "/fhir/Condition/_history?_count=1"
    assert _pages(anonymous, first, me) == [[]]
    theirs = create(client, _condition(other))["id"]
    assert client.delete(f"/fhir/Condition/{theirs}").status_code == 204
    assert _pages(anonymous, first, me) == [[]]  # was: an empty page, then a `next` link
    since = anonymous.get(first + "&_since=2000-01-01T00:00:00Z", headers=me)
    assert "entry" not in since.json() and _cursor(since) is None
    # The caller's own versions, between other patients' deleted ones: one a page, no empty page.
    mine = create(client, observation(patient_ref=f"Patient/{own}"))["id"]
    for _ in range(3):
        gone = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
        assert client.delete(f"/fhir/Observation/{gone}").status_code == 204
    updated = {**observation(patient_ref=f"Patient/{own}", value=80), "id": mine}
    answer = client.put(f"/fhir/Observation/{mine}", json=updated, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    gone = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
    assert client.delete(f"/fhir/Observation/{gone}").status_code == 204
    expected = [
        [("PUT", f"Observation/{mine}", 'W/"2"')],
        [("POST", "Observation", 'W/"1"')],
    ]
    assert _pages(anonymous, "/fhir/Observation/_history?_count=1", me) == expected
    system = _pages(anonymous, "/fhir/_history?_count=1", me)
    assert all(len(page) == 1 for page in system), system
    assert [page[0] for page in system][:2] == [e[0] for e in expected]


def test_history_cursors_are_opaque(client, anonymous, signed_in) -> None:
    """A cursor is no write sequence (which would count every patient's writes): it does not
    read as a number, and one changed or made up is refused."""
    own, _ = _people(client)
    me = signed_in(role="patient", patient_id=own)
    for value in (70, 71, 72):
        create(client, observation(patient_ref=f"Patient/{own}", value=value))
    answer = anonymous.get("/fhir/Observation/_history?_count=1", headers=me)
    cursor = _cursor(answer)
    assert cursor is not None and not cursor.isdigit()
    follow = anonymous.get(f"/fhir/Observation/_history?_count=1&_cursor={cursor}", headers=me)
    assert follow.status_code == 200 and len(follow.json()["entry"]) == 1
    changed = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BA")
    for bad in (changed, "5", "x" * len(cursor)):
        refused = anonymous.get(f"/fhir/Observation/_history?_cursor={bad}", headers=me)
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["issue"][0]["code"] == "invalid"


def test_history_stops_scanning_hidden_versions_and_pages_on(
    client, anonymous, signed_in, monkeypatch
) -> None:
    """Past HIDDEN_SCAN hidden versions a page ends early with a `next` link; following the
    links still lists every version of the caller's, once and in order."""
    monkeypatch.setattr(history, "HIDDEN_SCAN", 3)
    own, other = _people(client)
    me = signed_in(role="patient", patient_id=own)
    for _ in range(3):
        create(client, observation(patient_ref=f"Patient/{own}"))
        for _ in range(4):
            gone = create(client, observation(patient_ref=f"Patient/{other}"))["id"]
            assert client.delete(f"/fhir/Observation/{gone}").status_code == 204
    for count in (1, 2, 5):
        pages = _pages(anonymous, f"/fhir/Observation/_history?_count={count}", me)
        listed = [url for page in pages for _, url, _ in page]
        assert listed == ["Observation"] * 3, (count, pages)
        assert all(len(page) <= count for page in pages)
        if count == 1:  # eight hidden versions before the newest of the caller's: cut at three
            assert pages[0] == [], pages
    staff = _pages(client, "/fhir/Observation/_history?_count=5", {})
    assert sum(len(page) for page in staff) == 3 + 3 * 4 * 2
    assert all(len(page) == 5 for page in staff[:-1])


def test_a_history_page_is_one_query_when_nothing_is_hidden(client, anonymous, signed_in, app):
    own, other = _people(client)
    me = signed_in(role="patient", patient_id=own)
    mine = create(client, observation(patient_ref=f"Patient/{own}"))["id"]
    for _ in range(3):
        create(client, observation(patient_ref=f"Patient/{own}"))
        create(client, observation(patient_ref=f"Patient/{other}"))
    seen: list[str] = []

    def record(_conn, _cursor, statement, *_) -> None:  # type: ignore[no-untyped-def]
        if "resource_history" in statement and "ORDER BY" in statement:
            seen.append(statement)

    engine = app.state.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        for caller, headers, url in (
            (client, {}, "/fhir/Observation/_history?_count=2"),
            (client, {}, "/fhir/_history?_count=2"),
            (anonymous, me, "/fhir/Observation/_history?_count=2"),
            (anonymous, me, f"/fhir/Observation/{mine}/_history?_count=2"),
        ):
            seen.clear()
            answer = caller.get(url, headers=headers)
            assert answer.status_code == 200, answer.text
            assert len(seen) == 1, (url, seen)
    finally:
        event.remove(engine, "before_cursor_execute", record)


# -- _total=estimate -------------------------------------------------------------------------


def _lab(patient_id: str, code: str) -> dict:
    return {
        "resource": observation(patient_ref=f"Patient/{patient_id}", code=code),
        "request": {"method": "POST", "url": "Observation"},
    }


def test_an_estimated_total_counts_only_what_a_limited_caller_may_see(
    client, anonymous, signed_in, settings
) -> None:
    own, other = _people(client)
    entries = [_lab(other, "common-lab") for _ in range(300)]
    entries += [_lab(own, "common-lab"), _lab(own, "rare-lab")]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200, answer.text
    theirs = create(client, _condition(other))["id"]
    assert theirs
    if settings.database_url.startswith("postgresql"):  # the planner's statistics, up to date
        engine = create_engine(settings.database_url, poolclass=NullPool)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("ANALYZE"))
        engine.dispose()
    me = signed_in(role="patient", patient_id=own)
    mine = {
        "Condition?_count=1": 0,
        "Observation?_count=1": 2,
        "Observation?code=common-lab&_count=1": 1,
        "Observation?code=rare-lab&_count=1": 1,
    }
    for total in ("estimate", "accurate"):
        told = {q: anonymous.get(f"/fhir/{q}&_total={total}", headers=me).json() for q in mine}
        assert {q: body.get("total") for q, body in told.items()} == mine, total
    # a caller who sees all still gets the planner's estimate, if it is one
    staff = client.get("/fhir/Observation?code=common-lab&_count=1&_total=estimate").json()
    assert isinstance(staff["total"], int) and staff["total"] > 1
