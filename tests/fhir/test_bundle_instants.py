"""Bundle.entry.response.lastModified is a FHIR instant (the conformance suite's validator found
HTTP dates there): in transaction-responses and in history Bundles."""

from __future__ import annotations

import re

from factories import FHIR_JSON, patient

INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def test_transaction_and_history_answer_instants(client):
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patient(), "request": {"method": "POST", "url": "Patient"}}],
    }
    answer = client.post("/fhir", json=bundle, headers=FHIR_JSON)
    assert answer.status_code == 200
    response = answer.json()["entry"][0]["response"]
    assert INSTANT.match(response["lastModified"]), response
    history = client.get("/fhir/Patient/_history")
    assert history.status_code == 200
    for entry in history.json()["entry"]:
        assert INSTANT.match(entry["response"]["lastModified"]), entry["response"]
