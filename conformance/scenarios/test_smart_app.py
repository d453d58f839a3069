"""(b) A patient-facing SMART app: authorization code with PKCE through the server's own sign-in
and consent pages (the SMART `fhirclient` drives OAuth; the pages are filled as a browser would),
then the app reads the patient's record with fhirclient and with fhir-kit-client under Node.js."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import httpx
from fhirclient import client as smart_client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

from conformance.scenarios.partners import Returned
from conformance.stage import HERE, Stage

SCOPE = "openid fhirUser launch/patient patient/*.rs offline_access"


class _Form(HTMLParser):
    """The fields of the page's form, as a browser would post them."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        values = dict(attrs)
        if tag == "form":
            self.action = values.get("action")
        elif tag == "input" and values.get("name") and values.get("type") == "hidden":
            self.fields[values["name"]] = values.get("value") or ""


def _form(page: httpx.Response) -> _Form:
    assert page.status_code == 200, page.text[:500]
    parsed = _Form()
    parsed.feed(page.text)
    assert parsed.action, "the page has no form"
    return parsed


def sign_in(stage: Stage, authorize_url: str) -> str:
    """The browser part: sign in, allow, and return the redirect back to the app."""
    with httpx.Client(follow_redirects=False, timeout=30) as browser:
        login = _form(browser.get(authorize_url))
        consent = _form(
            browser.post(
                urljoin(stage.base, login.action or ""),
                data={
                    **login.fields,
                    "email": stage.patient_email,
                    "password": stage.patient_password,
                },
            )
        )
        back = browser.post(
            urljoin(stage.base, consent.action or ""), data={**consent.fields, "decision": "allow"}
        )
    assert back.status_code in (302, 303), back.text[:500]
    location = back.headers["location"]
    assert location.startswith(stage.redirect_uri)
    return location


def test_a_patient_app_reads_the_record_with_a_smart_token(stage: Stage, tmp_path: Path):
    returned = Returned(stage, "smart-app")
    app = smart_client.FHIRClient(
        settings={
            "app_id": stage.app_client_id,
            "api_base": stage.fhir,
            "redirect_uri": stage.redirect_uri,
            "scope": SCOPE,
        }
    )
    authorize_url = app.authorize_url
    assert "code_challenge_method=S256" in authorize_url
    app.handle_callback(sign_in(stage, authorize_url))
    assert app.ready and app.patient_id == stage.patient_id

    patient = Patient.read(stage.patient_id, app.server)
    returned.add([patient.as_json()])
    assert patient.name[0].family == "Hoeger"
    search = Observation.where(struct={"patient": stage.patient_id})
    observations = list(search.perform_resources_iter(app.server))
    returned.add(o.as_json() for o in observations)
    assert observations
    assert {o.subject.reference for o in observations} == {f"Patient/{stage.patient_id}"}

    token = app.server.auth.access_token
    done = subprocess.run(
        ["node", str(HERE / "smart_app.mjs")],
        input=json.dumps(
            {
                "fhir": stage.fhir,
                "token": token,
                "patient": stage.patient_id,
                "other": stage.other_patient_id,
                "out": str(Path(stage.out) / "smart-app-js.ndjson"),
            }
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["patient"] == f"Patient/{stage.patient_id}"
    for kind in ("Observation", "Condition", "Encounter", "Immunization"):
        assert summary["counts"][kind] > 0, summary
    assert summary["outside"] == [], "resources of another patient were returned"
    assert summary["otherPatientStatus"] == 404  # outside the compartment: not even its existence
