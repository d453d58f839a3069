"""schemathesis against the running server's OpenAPI description of /fhir and /api: whatever it
generates (negative cases included), no 5xx and no response outside the documented schema.

It runs last (see conftest.py): an admin backend service may change what it generates requests for.
"""

from __future__ import annotations

import os
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import allow_header_conformance, positive_data_acceptance

from conformance.scenarios.partners import backend_token
from conformance.stage import Stage

_stage = Stage.load(Path(os.environ["CONFORMANCE_STAGE"]))
HEADERS = {"Authorization": f"Bearer {backend_token(_stage, _stage.ehr)['access_token']}"}
schema = schemathesis.openapi.from_url(f"{_stage.base}/openapi.json").include(
    path_regex="^/(fhir|api)(/|$)"
)


# As in tests/api: the FHIR and /api rules reach past JSON Schema (ids that must exist, calendar
# dates, codes bound to value sets), so a schema-valid request may still earn a 4xx. And FHIR's
# URL templates overlap (`/fhir/Patient/$export` is also `/fhir/{type}/{id}`, `/fhir/_search` also
# `/fhir/{type}`): a 405's Allow rightly lists every method of every route the URL reaches, not
# those of the one template schemathesis had in mind. Every other check runs (no 5xx, documented
# status codes and content types, response schemas and headers, negative data rejected).
EXCLUDED = [positive_data_acceptance, allow_header_conformance]
# Cases per operation: a few in CI; `CONFORMANCE_EXAMPLES=100 CONFORMANCE_RANDOM=1 python -m
# conformance -- -k openapi` generates about 6,000 in all (issue 10's scripted check).
EXAMPLES = int(os.environ.get("CONFORMANCE_EXAMPLES", "8"))
# The same cases on every run unless CONFORMANCE_RANDOM=1 (set it, with many examples, to hunt):
# a project's CI must not fail on whichever old bug today's draw happens to reach. A random draw
# found a 500 (NUL in an e-mail address on PostgreSQL) this way; it is fixed and tested.
RANDOM = os.environ.get("CONFORMANCE_RANDOM") == "1"


@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=not RANDOM,
    database=None,
)
def test_the_server_matches_its_openapi_description(case):  # type: ignore[no-untyped-def]
    case.call_and_validate(headers=HEADERS, excluded_checks=EXCLUDED, timeout=60)
