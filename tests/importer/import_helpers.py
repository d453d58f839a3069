"""Generated import inputs (Bundles, NDJSON, archives) and the database checks the tests make."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections import Counter
from pathlib import Path

from factories import observation, patient
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool
from typer.testing import CliRunner

from vitasync_fhir.cli import cli
from vitasync_fhir.db import sync_url


def run_import(database_url: str, *args: str) -> tuple[int, str]:
    """The command in this process (its exit code and everything it printed)."""
    runner = CliRunner()
    env = {"VITASYNC_DATABASE_URL": database_url, "VITASYNC_BASE_URL": "http://testserver"}
    result = runner.invoke(cli, ["import", "--quiet", *args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def patient_bundle(mrn: str, *, observations: int = 2, kind: str = "transaction") -> dict:
    """A Synthea-like Bundle: a Patient and its Observations, linked by urn:uuid fullUrls."""
    full_url = f"urn:uuid:{uuid.uuid4()}"
    entries = [
        {
            "fullUrl": full_url,
            "resource": patient(family=f"Fam{mrn}", identifier=mrn),
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    for number in range(observations):
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": observation(patient_ref=full_url, value=60 + number),
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def ndjson_lines(count: int, *, prefix: str = "nd") -> list[str]:
    """Patients with ids (as a Bulk Data export writes them), one per line."""
    return [
        json.dumps({**patient(family=f"Nd{n}", identifier=f"{prefix}-{n}"), "id": f"{prefix}-{n}"})
        for n in range(count)
    ]


def write_archive(path: Path, members: dict[str, bytes]) -> Path:
    mode = "w:xz" if path.name.endswith(".xz") else "w:gz"
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


class Counts:
    """Plain SQL over the database the import wrote to."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(sync_url(url), poolclass=NullPool)

    def scalar(self, sql: str, **params: object) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text(sql), params).scalar_one())

    def of(self, resource_type: str) -> int:
        return self.scalar(
            "SELECT count(*) FROM resources WHERE resource_type = :t AND NOT deleted",
            t=resource_type,
        )

    def progress(self) -> int:
        return self.scalar("SELECT count(*) FROM import_progress")

    def patients_by_identifier(self) -> Counter[str]:
        """How many current Patients carry each identifier value (more than one: a duplicate)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT content FROM resources WHERE resource_type = 'Patient' AND NOT deleted"
                )
            )
            return Counter(
                identifier["value"]
                for (content,) in rows
                for identifier in json.loads(content).get("identifier", [])
            )
