"""OperationOutcome: the one shape in which every /fhir error leaves the server."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import orjson

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Issue:
    code: str
    diagnostics: str
    severity: str = "error"
    expression: str | None = None

    def as_json(self) -> dict:
        issue: dict = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


class FhirError(Exception):
    """An error answered as an OperationOutcome with `status`."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        *,
        expression: str | None = None,
        issues: Iterable[Issue] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        listed = list(issues)
        self.issues = listed or [Issue(code=code, diagnostics=diagnostics, expression=expression)]
        self.headers = headers or {}


def bad_request(diagnostics: str, *, expression: str | None = None) -> FhirError:
    return FhirError(400, "invalid", diagnostics, expression=expression)


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics)


def gone(diagnostics: str, *, headers: dict[str, str] | None = None) -> FhirError:
    return FhirError(410, "deleted", diagnostics, headers=headers)


def conflict(diagnostics: str) -> FhirError:
    return FhirError(409, "conflict", diagnostics)


def precondition_failed(diagnostics: str) -> FhirError:
    return FhirError(412, "conflict", diagnostics)


def unprocessable(issues: Iterable[Issue]) -> FhirError:
    listed = list(issues)
    first = listed[0].diagnostics if listed else "The resource is not valid"
    return FhirError(422, "processing", first, issues=listed)


def outcome(issues: Iterable[Issue]) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [i.as_json() for i in issues]}


def outcome_bytes(issues: Iterable[Issue]) -> bytes:
    return orjson.dumps(outcome(issues))


def information(diagnostics: str) -> dict:
    return outcome([Issue(code="informational", diagnostics=diagnostics, severity="information")])


def written(resource_type: str, resource_id: str, *, created: bool) -> dict:
    """What `Prefer: return=OperationOutcome` answers for a create or an update."""
    return information(f"{'Created' if created else 'Updated'} {resource_type}/{resource_id}")


def deleted(done: bool) -> dict:
    """What `Prefer: return=OperationOutcome` answers for a delete."""
    return information("Deleted" if done else "Nothing to delete")


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()
