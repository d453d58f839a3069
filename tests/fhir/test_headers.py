"""`Prefer` is read in one place for every route: search, writes, Bundles and $export."""

from __future__ import annotations

from vitasync_fhir.fhir.headers import Preference, preference


def test_prefer_is_read_alike_everywhere() -> None:
    assert preference(None) == Preference()
    assert preference("respond-async, handling=lenient") == Preference(
        lenient=True, respond_async=True
    )
    assert preference("Respond-Async;Handling=LENIENT") == Preference(
        lenient=True, respond_async=True
    )  # names and the handling value in any case (RFC 7240)
    assert preference('return="OperationOutcome"').returns == "OperationOutcome"
    assert preference("return=everything").returns is None
    assert preference("handling=strict").lenient is False


def test_search_and_export_take_a_lenient_handling_in_any_case(client) -> None:  # type: ignore[no-untyped-def]
    loud = {"Prefer": "HANDLING=Lenient"}
    found = client.get("/fhir/Patient", params={"nonsense": "1"}, headers=loud)
    assert found.status_code == 200, found.text
    kicked = client.get(
        "/fhir/$export",
        params={"_elements": "id"},
        headers={"Prefer": "Respond-Async, " + loud["Prefer"]},
    )
    assert kicked.status_code == 202, kicked.text
