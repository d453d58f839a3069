"""The policy table, checked case by case: role x type x interaction x own/other patient."""

from __future__ import annotations

import itertools

import pytest

from vitasync_fhir.auth import policy
from vitasync_fhir.auth.policy import Caller, allowed, may_see, may_touch, restrict
from vitasync_fhir.auth.scopes import Scope, parse

ME = "me-1"
OTHER = "other-2"
INTERACTIONS = sorted(policy.INTERACTIONS)
# Every type the table names, plus types no role but admin lists.
TYPES = sorted(
    {name for rows in policy.POLICY.values() for name in rows if name != "*"}
    | {"AuditEvent", "Account", "Claim", "Coverage", "Basic", "Group", "Person"}
)


def full_caller(role: str) -> Caller:
    """A caller whose token scopes allow everything: only the role table limits it."""
    patient = ME if role == "patient" else None
    return Caller(role=role, scopes=(Scope("user", "*", "cruds"),), user_id="u", patient_id=patient)


def owned_by(resource_type: str, patient_id: str) -> dict:
    """A resource of `resource_type` in `patient_id`'s compartment (if the type has one)."""
    resource: dict = {"resourceType": resource_type, "id": f"{resource_type}-{patient_id}"}
    if resource_type == "Patient":
        resource["id"] = patient_id
        return resource
    paths = policy.compartment_paths().get(resource_type)
    if paths:
        node = resource
        steps = paths[0].split(".")
        for step in steps[:-1]:
            node[step] = [{}]
            node = node[step][0]
        node[steps[-1]] = {"reference": f"Patient/{patient_id}"}
    return resource


def expected(role: str, resource_type: str, interaction: str, owner: str) -> bool:
    """What the table says, read directly from POLICY (not through the functions under test)."""
    rows = policy.POLICY[role]
    rule = rows.get(resource_type) or rows.get("*")
    if rule is None or rule.access == "none":
        return False
    letter = policy.INTERACTIONS[interaction]
    if letter not in rule.letters:
        return False
    if (
        resource_type in policy.SERVER_WRITTEN
        and letter not in policy.SERVER_WRITTEN[resource_type]
    ):
        return False
    if rule.access in ("own", "shared") and resource_type in policy.compartment_paths():
        return owner == "own"  # "shared" adds what is in no patient's compartment (not "other")
    return True


CASES = list(itertools.product(policy.ROLES, TYPES, INTERACTIONS, ("own", "other")))


@pytest.mark.parametrize(("role", "resource_type", "interaction", "owner"), CASES)
def test_policy_matrix(role: str, resource_type: str, interaction: str, owner: str) -> None:
    caller = full_caller(role)
    resource = owned_by(resource_type, ME if owner == "own" else OTHER)
    want = expected(role, resource_type, interaction, owner)
    assert may_touch(caller, resource_type, resource, interaction) is want
    type_level = expected(role, resource_type, interaction, "own")
    assert allowed(caller, resource_type, interaction) is type_level


def test_matrix_is_large_and_mixed() -> None:
    outcomes = {expected(*case) for case in CASES}
    assert len(CASES) > 2000 and outcomes == {True, False}


@pytest.mark.parametrize(
    ("role", "resource_type", "interaction", "owner", "verdict"),
    [
        ("patient", "Observation", "read", ME, True),
        ("patient", "Observation", "read", OTHER, False),
        ("patient", "Observation", "create", ME, False),
        ("patient", "Observation", "delete", ME, False),
        ("patient", "Patient", "update", ME, True),
        ("patient", "Patient", "update", OTHER, False),
        ("patient", "Patient", "create", ME, False),
        ("patient", "Appointment", "create", ME, True),
        ("patient", "MedicationRequest", "read", ME, True),
        ("patient", "AuditEvent", "read", ME, False),
        ("pharmacist", "MedicationRequest", "update", OTHER, True),
        ("pharmacist", "MedicationRequest", "create", OTHER, False),
        ("pharmacist", "MedicationDispense", "create", OTHER, True),
        ("pharmacist", "Patient", "read", OTHER, True),
        ("pharmacist", "Patient", "update", OTHER, False),
        ("pharmacist", "Observation", "read", OTHER, False),
        ("pharmacist", "Condition", "search", OTHER, False),
        ("pharmacist", "Immunization", "read", OTHER, False),
        ("nurse", "Observation", "create", OTHER, True),
        ("nurse", "Immunization", "update", OTHER, True),
        ("nurse", "Procedure", "create", OTHER, True),
        ("nurse", "Observation", "delete", OTHER, False),
        ("nurse", "MedicationRequest", "create", OTHER, False),
        ("nurse", "Condition", "read", OTHER, True),
        ("doctor", "MedicationRequest", "create", OTHER, True),
        ("doctor", "Condition", "delete", OTHER, True),
        ("doctor", "AuditEvent", "read", OTHER, False),
        ("doctor", "Account", "read", OTHER, False),
        ("admin", "AuditEvent", "read", OTHER, True),
        ("admin", "AuditEvent", "update", OTHER, False),
        ("admin", "AuditEvent", "delete", OTHER, False),
        ("admin", "Account", "delete", OTHER, True),
    ],
)
def test_policy_spot_checks(
    role: str, resource_type: str, interaction: str, owner: str, verdict: bool
) -> None:
    """Hand-written expectations, so a wrong table cannot agree with a wrong matrix."""
    caller = full_caller(role)
    assert may_touch(caller, resource_type, owned_by(resource_type, owner), interaction) is verdict


def test_directory_types_are_not_patient_data() -> None:
    caller = full_caller("patient")
    practitioner = {"resourceType": "Practitioner", "id": "p1"}
    assert may_see(caller, "Practitioner", practitioner)
    assert restrict(caller, "Practitioner") is None


def test_scopes_narrow_the_role() -> None:
    doctor = Caller(role="doctor", scopes=parse("user/Observation.rs").resources, user_id="d")
    assert allowed(doctor, "Observation", "read")
    assert allowed(doctor, "Observation", "search")
    assert not allowed(doctor, "Observation", "create")
    assert not allowed(doctor, "Condition", "read")


def test_v1_scopes_are_understood() -> None:
    nurse = Caller(role="nurse", scopes=parse("user/*.read").resources, user_id="n")
    assert allowed(nurse, "Observation", "read") and allowed(nurse, "Observation", "history-type")
    assert not allowed(nurse, "Observation", "update")
    writer = Caller(role="nurse", scopes=parse("user/*.write").resources, user_id="n")
    assert allowed(writer, "Observation", "create") and not allowed(writer, "Observation", "read")


def test_patient_scopes_limit_a_doctor_to_the_launch_patient() -> None:
    doctor = Caller(
        role="doctor", scopes=parse("patient/*.rs").resources, user_id="d", patient_id=ME
    )
    assert may_see(doctor, "Observation", owned_by("Observation", ME))
    assert not may_see(doctor, "Observation", owned_by("Observation", OTHER))
    assert restrict(doctor, "Observation") is not None
    without_patient = Caller(role="doctor", scopes=parse("patient/*.rs").resources, user_id="d")
    assert not allowed(without_patient, "Observation", "read")


def test_user_scopes_beat_patient_scopes_for_the_same_letter() -> None:
    doctor = Caller(
        role="doctor",
        scopes=parse("patient/*.rs user/Observation.rs").resources,
        user_id="d",
        patient_id=ME,
    )
    assert may_see(doctor, "Observation", owned_by("Observation", OTHER))
    assert not may_see(doctor, "Condition", owned_by("Condition", OTHER))


def test_restrict_denies_with_a_false_clause() -> None:
    pharmacist = full_caller("pharmacist")
    clause = restrict(pharmacist, "Observation")
    assert clause is not None
    from vitasync_fhir.fhir.tables import resources

    assert str(clause(resources)) == "false"


def test_operations() -> None:
    patient = full_caller("patient")
    assert allowed(patient, "Patient", "$everything")
    assert not allowed(patient, "Patient", "$unknown-operation")
    assert allowed(full_caller("admin"), "Patient", "$unknown-operation")
    with pytest.raises(ValueError):
        allowed(patient, "Patient", "frobnicate")


def test_compartment_by_references() -> None:
    appointment = {
        "resourceType": "Appointment",
        "participant": [
            {"actor": {"reference": "Practitioner/9"}},
            {"actor": {"reference": f"Patient/{ME}"}},
        ],
    }
    assert policy.patients_of("Appointment", appointment) == {ME}
    absolute = {
        "resourceType": "Observation",
        "subject": {"reference": f"http://x/fhir/Patient/{ME}/_history/2"},
    }
    assert policy.patients_of("Observation", absolute, base="http://x/fhir") == {ME}
    # Another server's Patient with our patient's id is not our patient.
    assert policy.patients_of("Observation", absolute, base="http://y/fhir") == set()
    lookalike = {"resourceType": "Observation", "subject": {"reference": f"Group/{ME}"}}
    assert policy.patients_of("Observation", lookalike) == set()
    assert may_see(
        full_caller("patient"), "Observation", '{"subject": {"reference": "Patient/me-1"}}'
    )


def test_a_role_with_a_wildcard_lists_nothing_else() -> None:
    for role, rows in policy.POLICY.items():
        assert "*" not in rows or len(rows) == 1, role


def test_ceiling() -> None:
    nurse = policy.ceiling("nurse", ["user"])
    assert Scope("user", "Observation", "crus") in nurse
    assert all(s.resource_type != "MedicationDispense" for s in nurse)
    assert policy.ceiling("admin", ["user"]) == (Scope("user", "*", "cruds"),)
