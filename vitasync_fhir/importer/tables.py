"""What an import has finished: one row per unit (a Bundle, a batch entry, NDJSON lines).

A row is written in the same transaction as the unit's resources, so after a crash a unit is either
loaded and recorded, or neither; running the same import again skips exactly the recorded units.
"""

from sqlalchemy import Column, DateTime, Integer, String, Table

from vitasync_fhir.db import metadata

import_progress = Table(
    "import_progress",
    metadata,
    Column("source", String(1024), primary_key=True),  # absolute path of the file or archive
    Column("member", String(1024), primary_key=True),  # file inside an archive; "" otherwise
    Column("unit", String(64), primary_key=True),  # "bundle", "entry 12", "lines 1-500"
    Column("sha256", String(64), primary_key=True),  # of the unit's bytes: a changed file reloads
    Column("resources", Integer, nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=False),
)
