"""(d) An EHR (a backend service) posts a Synthea patient as one transaction Bundle with fhirpy;
every resource it created reads back and every reference in them resolves."""

from __future__ import annotations

import json
from pathlib import Path

from fhirpy import SyncFHIRClient

from conformance.scenarios.partners import Returned, references
from conformance.stage import Stage


def test_a_synthea_transaction_loads_and_every_reference_resolves(stage: Stage, ehr_token: str):
    returned = Returned(stage, "synthea-transaction")
    ehr = SyncFHIRClient(stage.fhir, authorization=f"Bearer {ehr_token}")
    bundle = json.loads(Path(stage.synthea).read_text())
    answer = ehr.execute(stage.fhir, method="post", data=bundle)
    returned.add([answer])
    assert answer["type"] == "transaction-response"
    assert len(answer["entry"]) == len(bundle["entry"])
    assert {e["response"]["status"] for e in answer["entry"]} == {"201 Created"}

    created = {}
    for entry in answer["entry"]:
        kind, rid = entry["response"]["location"].split("/fhir/", 1)[1].split("/")[:2]
        resource = ehr.reference(kind, rid).to_resource().serialize()
        created[f"{kind}/{rid}"] = resource
    returned.add(created.values())

    targets = {
        ref
        for resource in created.values()
        for ref in references(resource)
        if not ref.startswith("#")  # contained resources resolve inside their resource
    }
    assert targets and not [t for t in targets if t.startswith("urn:")], "unresolved urn:uuid"
    for target in sorted(targets - created.keys()):
        kind, rid = target.split("/")
        found = ehr.reference(kind, rid).to_resource().serialize()
        returned.add([found])
    patients = ehr.resources("Patient").search(family="Kreiger").fetch_all()
    assert len(patients) == 1 and f"Patient/{patients[0]['id']}" in created
