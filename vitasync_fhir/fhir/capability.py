"""The CapabilityStatement, generated from the routes the app really has.

Interactions come from matching each mounted route against the table below, search parameters
from the search engine's definitions: nothing here is a hand-kept list of what works.
"""

from __future__ import annotations

import re

from fastapi import FastAPI

from vitasync_fhir import __version__
from vitasync_fhir.auth import oauth, policy
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.outcomes import dumps
from vitasync_fhir.fhir.search import registry

# (method, path shape under /fhir) -> (level, interaction code)
INTERACTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("GET", "/{}/{}"): ("type", "read"),
    ("GET", "/{}/{}/_history/{}"): ("type", "vread"),
    ("PUT", "/{}/{}"): ("type", "update"),
    ("PATCH", "/{}/{}"): ("type", "patch"),
    ("DELETE", "/{}/{}"): ("type", "delete"),
    ("GET", "/{}/{}/_history"): ("type", "history-instance"),
    ("GET", "/{}/_history"): ("type", "history-type"),
    ("POST", "/{}"): ("type", "create"),
    ("GET", "/{}"): ("type", "search-type"),
    ("POST", ""): ("system", "transaction"),
    ("GET", "/_history"): ("system", "history-system"),
    ("GET", ""): ("system", "search-system"),
}
CONDITIONAL = {
    ("PUT", "/{}"): "conditionalUpdate",
    ("DELETE", "/{}"): "conditionalDelete",
}
_PARAM = re.compile(r"\{[^}]+\}")


def _shapes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path shape) of every /fhir route, read from the app's own OpenAPI description."""
    shapes = set()
    for path, operations in app.openapi().get("paths", {}).items():
        if not path.startswith("/fhir"):
            continue
        shape = _PARAM.sub("{}", path[len("/fhir") :]).rstrip("/")
        shapes.update((method.upper(), shape) for method in operations)
    return shapes


def _search_params(resource_type: str) -> list[dict]:
    return registry.search_parameters(resource_type)


def _common_params() -> list[dict]:
    return [
        {"name": p.code, "type": p.type, "definition": p.url}
        for p in sorted(registry.common_params().values(), key=lambda p: p.code)
    ]


def _open_to_clients(resource_type: str, interactions: list[str]) -> list[str]:
    """The interactions any role may use on the type: AuditEvent is written by the server
    alone (policy.SERVER_WRITTEN), so its create, update, patch and delete are not offered."""
    cap = policy.SERVER_WRITTEN.get(resource_type)
    if cap is None:
        return interactions
    return [code for code in interactions if policy.INTERACTIONS.get(code, "") in cap]


def statement(app: FastAPI) -> dict:
    settings = app.state.settings
    shapes = _shapes(app)
    implemented = [INTERACTIONS[s] for s in sorted(shapes) if s in INTERACTIONS]
    type_level = sorted({code for level, code in implemented if level == "type"})
    system_level = sorted({code for level, code in implemented if level == "system"})
    if "transaction" in system_level:
        system_level.append("batch")
    conditional = {flag for shape, flag in CONDITIONAL.items() if shape in shapes}
    type_operations = getattr(app.state, "type_operations", {})
    resources = []
    for name in sorted(resource_types()):
        codes = _open_to_clients(name, type_level)
        writable = "update" in codes
        entry: dict = {
            "type": name,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{name}",
            "interaction": [{"code": code} for code in codes],
            # AuditEvent offers no update: its versions are kept, but If-Match has no use there.
            "versioning": "versioned-update" if writable else "versioned",
            "readHistory": True,
            "updateCreate": writable,
            "conditionalCreate": "create" in codes,
            # If-None-Match and If-Modified-Since answer 304 (router.read_answer).
            "conditionalRead": "full-support",
            # References are stored as given (relative, absolute, logical by identifier,
            # contained); the server neither resolves nor enforces their targets.
            "referencePolicy": ["literal", "logical", "local"],
            "conditionalUpdate": writable and "conditionalUpdate" in conditional,
            "conditionalDelete": "single"
            if "delete" in codes and "conditionalDelete" in conditional
            else "not-supported",
        }
        if "search-type" in type_level:
            entry["searchParam"] = _search_params(name)
            entry["searchInclude"] = registry.includes(name)
            entry["searchRevInclude"] = registry.reverse_includes(name)
        if name in type_operations:
            entry["operation"] = type_operations[name]
        resources.append(entry)
    operations = getattr(app.state, "operations", [])
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-27",
        "publisher": "VitaSync FHIR",
        "kind": "instance",
        "software": {"name": "VitaSync FHIR", "version": __version__},
        "implementation": {"description": "VitaSync FHIR server", "url": settings.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "security": oauth.security_component(settings),
                "interaction": [{"code": code} for code in system_level],
                # A search across types (GET /fhir?_type=...) takes the parameters every type has.
                **({"searchParam": _common_params()} if "search-system" in system_level else {}),
                "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
                **({"operation": operations} if operations else {}),
            }
        ],
    }


def statement_text(app: FastAPI) -> str:
    cached = getattr(app.state, "capability_text", None)
    if cached is None:
        cached = dumps(statement(app))
        app.state.capability_text = cached
    return cached
