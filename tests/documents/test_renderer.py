"""PDFs are drawn in a renderer process of the web worker's own: WeasyPrint never loads in the
worker, and a renderer that dies costs one 503, after which a new one draws the next PDF."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fastapi.testclient import TestClient


def test_a_dead_renderer_is_one_503_then_a_new_one_draws(
    anonymous: TestClient, signed_in, prescription: dict
) -> None:  # type: ignore[no-untyped-def]
    doctor = signed_in(role="doctor")
    path = f"/api/prescriptions/{prescription['id']}/pdf"
    first = anonymous.get(path, headers=doctor, params={"paper": "a4"})
    assert first.status_code == 200 and first.content.startswith(b"%PDF-")
    renderer = anonymous.app.state.renderer  # type: ignore[attr-defined]
    drawn_by = renderer.pid
    assert drawn_by is not None and drawn_by != os.getpid()
    os.kill(drawn_by, signal.SIGKILL)
    time.sleep(0.2)
    # Another paper is another document: not in the render cache, so the renderer is needed.
    failed = anonymous.get(path, headers=doctor, params={"paper": "letter"})
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]
    again = anonymous.get(path, headers=doctor, params={"paper": "letter"})
    assert again.status_code == 200 and again.content.startswith(b"%PDF-")
    assert renderer.pid not in (None, drawn_by)


SCRIPT = """
import sys
sys.path[:0] = {paths!r}
from fastapi.testclient import TestClient
from documents_helpers import medication_request, patient, practitioner
from factories import create
from support import service_headers
from vitasync_fhir import migrations
from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings

settings = Settings(database_url={url!r}, base_url="http://testserver", data_dir={data!r},
                    signing_key_file={key!r})
migrations.upgrade(settings.database_url)
with TestClient(create_app(settings), base_url="http://testserver") as client:
    client.headers.update(service_headers(settings))
    who = create(client, patient())
    doctor = create(client, practitioner())
    made = create(client, medication_request(patient_id=who["id"], practitioner_id=doctor["id"]))
    answer = client.get(f"/fhir/MedicationRequest/{{made['id']}}/$print")
    assert answer.status_code == 200 and answer.content.startswith(b"%PDF-"), answer.text
    print("weasyprint" in sys.modules)
"""


def test_the_web_worker_never_loads_weasyprint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    here = os.path.dirname(__file__)
    script = SCRIPT.format(
        paths=[here, os.path.dirname(here)],
        url=f"sqlite:///{tmp_path / 'pdf.sqlite3'}",
        data=str(tmp_path / "var"),
        key=str(tmp_path / "signing.pem"),
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "False", done.stdout
