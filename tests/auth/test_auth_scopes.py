"""SMART v1/v2 scope parsing and arithmetic."""

from __future__ import annotations

import pytest

from vitasync_fhir.auth import policy
from vitasync_fhir.auth.scopes import Scope, covered, intersect, parse, parse_scope, subset


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("patient/Observation.rs", Scope("patient", "Observation", "rs")),
        ("user/*.cruds", Scope("user", "*", "cruds")),
        ("system/*.rs", Scope("system", "*", "rs")),
        ("patient/*.read", Scope("patient", "*", "rs")),
        ("user/*.write", Scope("user", "*", "cud")),
        ("user/Patient.*", Scope("user", "Patient", "cruds")),
        ("user/Observation.sr", None),  # v2 letters must be in order
        ("user/Observation.rx", None),
        ("user/Observation.rs?category=vital-signs", None),
        ("admin/*.rs", None),
        ("user/observation.rs", None),
        ("openid", None),
    ],
)
def test_parse_scope(text: str, scope: Scope | None) -> None:
    assert parse_scope(text) == scope


def test_parse_splits_other_scopes() -> None:
    requested = parse("openid fhirUser launch/patient offline_access patient/*.rs bogus")
    assert requested.other == {"openid", "fhirUser", "launch/patient", "offline_access"}
    assert requested.resources == (Scope("patient", "*", "rs"),)


def test_intersect_with_the_nurse_ceiling_expands_wildcards() -> None:
    granted = intersect(parse("user/*.cruds").resources, policy.ceiling("nurse", ["user"]))
    as_text = {str(s) for s in granted}
    assert "user/Observation.crus" in as_text
    assert "user/Condition.rs" in as_text
    assert not any(s.resource_type in ("*", "MedicationDispense") for s in granted)
    assert all("d" not in s.letters for s in granted)


def test_intersect_keeps_context_apart() -> None:
    assert intersect(parse("system/*.rs").resources, parse("user/*.cruds").resources) == ()


def test_escalation_is_detected() -> None:
    granted = parse("patient/Observation.rs offline_access")
    assert subset(parse("patient/Observation.r"), granted)
    assert not subset(parse("patient/Observation.rus"), granted)
    assert not subset(parse("patient/*.rs"), granted)
    assert not subset(parse("user/Observation.rs"), granted)
    assert not subset(parse("patient/Observation.rs openid"), granted)
    assert covered(Scope("user", "Patient", "r"), parse("user/*.rs").resources)
