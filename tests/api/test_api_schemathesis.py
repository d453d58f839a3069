"""schemathesis against the app's own OpenAPI description of /api: no 5xx, no response outside
its schema, whatever it generates (negative cases included).

The app is built at import (schemathesis parametrizes at collection) on its own SQLite file with
a backend-service token of the admin role, so every generated request reaches the rules.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from support import BASE_URL, service_headers

from vitasync_fhir import migrations
from vitasync_fhir.app import create_app
from vitasync_fhir.config import Settings
from vitasync_fhir.mapping.spec import load_all

_folder = Path(tempfile.mkdtemp(prefix="vitasync-schemathesis-"))
_settings = Settings(
    database_url=f"sqlite:///{_folder / 'api.sqlite3'}", base_url=BASE_URL, data_dir=_folder / "var"
)
migrations.upgrade(_settings.database_url)
app = create_app(_settings)
HEADERS = service_headers(_settings)
schema = schemathesis.openapi.from_asgi("/openapi.json", app).include(
    path_regex="^/api/(" + "|".join(load_all()) + ")"
)


# The /api rules reach past JSON Schema (calendar dates, ids that must exist, a doctor's free
# slot, which fields a vital's kind needs), so a schema-valid body may still earn a 4xx: the
# positive-data check is left out; every other check (no 5xx, documented status codes, content
# types, response schemas, negative data rejected) runs.
@schema.parametrize()
@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_matches_its_openapi_description(case):  # type: ignore[no-untyped-def]
    case.call_and_validate(headers=HEADERS, excluded_checks=[positive_data_acceptance])
