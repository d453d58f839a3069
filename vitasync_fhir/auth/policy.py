"""Who may do what: the role table, and the functions every path asks before touching data.

A request is allowed when BOTH the caller's role (the table below) and the caller's token scopes
allow it. Where either limits the caller to one patient (the role's rows say `own`, or the only
scopes that grant the interaction are `patient/` ones), the caller sees only resources in that
patient's compartment (the official R4 Patient CompartmentDefinition, `patient_compartment.json`).
Types outside every patient compartment (Practitioner, Organization, Medication, ValueSet...) hold
no patient data; for them `own` means the same as `any`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

import orjson
from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.sql import FromClause

from vitasync_fhir.auth.scopes import Scope

# (resource_type, resource_id, compartment_type, compartment_id): the Patient compartments of
# every current resource, kept by the search indexer; a Patient is in its own compartment.
from vitasync_fhir.fhir.search.tables import resource_compartments
from vitasync_fhir.fhir.search.values import local_reference
from vitasync_fhir.fhir.tables import resources as current_resources

Role = Literal["admin", "doctor", "nurse", "patient", "pharmacist"]
ROLES: tuple[Role, ...] = ("admin", "doctor", "nurse", "patient", "pharmacist")
STAFF: frozenset[str] = frozenset({"admin", "doctor", "nurse", "pharmacist"})
Access = Literal["own", "any", "none", "shared"]
OWN: Access = "own"
ANY: Access = "any"
NONE: Access = "none"
# The caller's own compartment and what is in no patient's: a doctor's Schedule, which a patient
# needs to book, but not another patient's (a Schedule whose actor is a patient is theirs).
SHARED: Access = "shared"

# -- resource groups (the nouns of the table) ---------------------------------------------------

PATIENT = ("Patient",)
DIRECTORY = (
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "HealthcareService",
    "Endpoint",
)
CONFORMANCE = (
    "CapabilityStatement",
    "StructureDefinition",
    "SearchParameter",
    "OperationDefinition",
    "ValueSet",
    "CodeSystem",
    "ConceptMap",
    "NamingSystem",
    "Questionnaire",
)
MEDICATION = ("Medication",)
PRESCRIPTIONS = ("MedicationRequest", "MedicationDispense")
VITALS = ("Observation",)
PROCEDURES = ("Procedure",)
IMMUNIZATIONS = ("Immunization",)
RECORDS = ("Encounter", "AllergyIntolerance", "DocumentReference")
DIAGNOSES = ("Condition", "DiagnosticReport", "CarePlan", "CareTeam", "ClinicalImpression")
APPOINTMENTS = ("Appointment", "AppointmentResponse")
SCHEDULING = ("Schedule", "Slot")
# Every clinical type in the patient compartment: what a doctor manages. Financial and
# administrative compartment types (Account, Claim, Coverage, Invoice, AuditEvent, Person, Group,
# ResearchSubject...) are left to admins.
CLINICAL = (
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Consent",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "List",
    "Media",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "MolecularSequence",
    "NutritionOrder",
    "Observation",
    "Procedure",
    "Provenance",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "RiskAssessment",
    "ServiceRequest",
    "Specimen",
    "Task",
    "VisionPrescription",
)


@dataclass(frozen=True, slots=True)
class Rule:
    letters: str  # SMART letters, subset of "cruds"
    access: Access


def rows(types: Iterable[str], letters: str, access: Access) -> dict[str, Rule]:
    return {name: Rule(letters, access) for name in types}


# -- THE TABLE: role -> resource type -> (interactions, over which patients) ---------------------
# Letters: c create, r read/vread/instance history, u update/patch, d delete, s search/type history.
# Within a role, later rows replace earlier ones for the same type. A type a role does not list is
# denied. "*" is every type (admin only; a role with "*" lists nothing else).
POLICY: dict[str, dict[str, Rule]] = {
    "admin": {"*": Rule("cruds", ANY)},
    "doctor": {
        # Removing a whole patient (and their account's record) is an administrator's job.
        **rows(PATIENT, "crus", ANY),
        **rows(CLINICAL, "cruds", ANY),
        **rows(MEDICATION, "crus", ANY),
        **rows(DIRECTORY, "rs", ANY),
        **rows(SCHEDULING, "rs", ANY),
        **rows(CONFORMANCE, "rs", ANY),
    },
    "nurse": {
        **rows(PATIENT, "crus", ANY),
        **rows(VITALS + PROCEDURES + IMMUNIZATIONS + RECORDS, "crus", ANY),
        **rows(("MedicationAdministration",) + APPOINTMENTS, "crus", ANY),
        **rows(DIAGNOSES + ("MedicationRequest",) + MEDICATION, "rs", ANY),
        **rows(DIRECTORY + SCHEDULING + CONFORMANCE, "rs", ANY),
    },
    "pharmacist": {
        **rows(("MedicationRequest",), "rus", ANY),  # u: mark a prescription filled
        **rows(("MedicationDispense",) + MEDICATION, "crus", ANY),
        **rows(("Subscription",), "cruds", ANY),  # hear of new prescriptions (rest-hook)
        **rows(PATIENT, "rs", ANY),  # demographics needed to fill a prescription
        **rows(DIRECTORY + CONFORMANCE, "rs", ANY),
        **rows(VITALS + PROCEDURES + IMMUNIZATIONS + RECORDS + DIAGNOSES, "", NONE),
    },
    "patient": {
        **rows(CLINICAL, "rs", OWN),
        **rows(PATIENT, "rus", OWN),  # may update their own profile, never create or delete
        **rows(APPOINTMENTS, "crus", OWN),  # book, reschedule and cancel their appointments
        **rows(DIRECTORY + SCHEDULING + MEDICATION + CONFORMANCE, "rs", ANY),
        **rows(("Schedule",), "rs", SHARED),
    },
}
# Written only by the server, whatever the role: the audit trail is append-only.
SERVER_WRITTEN: dict[str, str] = {"AuditEvent": "rs"}

# What a role may change when it updates a type: a pharmacist marks a prescription filled or not
# ("u: mark filled"), and may not rewrite its drug, quantity, refills or patient. Roles and types
# not listed may change anything their letters allow.
CHANGES: dict[tuple[str, str], frozenset[str]] = {
    ("pharmacist", "MedicationRequest"): frozenset({"status", "statusReason"}),
    # A patient keeps their own demographics; the clinic's identifiers (MRN), `active`, links
    # and care team are the clinic's.
    ("patient", "Patient"): frozenset(
        {
            "name", "telecom", "address", "gender", "birthDate", "maritalStatus", "contact",
            "communication", "photo", "extension", "multipleBirthBoolean", "multipleBirthInteger",
            "language",
        }
    ),
}  # fmt: skip
# The values a role may give an element, on create and whenever an update changes it: a
# pharmacist marks a prescription filled, holds or stops it, never (re)activates one (that is the
# prescriber's); a patient asks for, books or cancels an appointment, never marks it fulfilled,
# arrived or a no-show.
VALUES: dict[tuple[str, str, str], frozenset[str]] = {
    ("pharmacist", "MedicationRequest", "status"): frozenset({"completed", "on-hold", "stopped"}),
    ("patient", "Appointment", "status"): frozenset({"proposed", "pending", "booked", "cancelled"}),
}
# References a role may make only to the caller themselves (their fhirUser), on create and
# whenever an update changes them: a doctor prescribes in their own name, not another's.
SELF: frozenset[tuple[str, str, str]] = frozenset({("doctor", "MedicationRequest", "requester")})
# Elements the server sets or derives, never counted as a caller's change.
_NOT_CHANGES = frozenset({"resourceType", "id", "meta", "text"})


def changed_beyond(
    caller: Caller, resource_type: str, before: str | dict | None, after: dict
) -> list[str]:
    """The elements an update changes that the caller's role may not change (CHANGES); `before`
    is the current content (JSON text, read only for a role listed there)."""
    allowed = CHANGES.get((caller.role, resource_type))
    if allowed is None:
        return []
    before = orjson.loads(before) if isinstance(before, str) else (before or {})
    keys = (set(before) | set(after)) - _NOT_CHANGES - allowed
    return sorted(k for k in keys if before.get(k) != after.get(k))


def refused_values(
    caller: Caller, resource_type: str, before: str | dict | None, after: dict, *, base: str = ""
) -> list[str]:
    """What a write gives that the caller's role may not give (VALUES, SELF), in words; only
    elements the write sets or changes count (`before`: the current content, or None)."""
    rules = [
        (element, allowed)
        for (role, type_, element), allowed in VALUES.items()
        if role == caller.role and type_ == resource_type
    ]
    selves = [e for role, t, e in SELF if role == caller.role and t == resource_type]
    if not rules and not (selves and caller.fhir_user):  # a backend service acts for no one
        return []
    before = orjson.loads(before) if isinstance(before, str) else (before or {})
    changed = [e for e in {e for e, _ in rules} | set(selves) if before.get(e) != after.get(e)]
    refused = []
    for element, allowed in rules:
        value = after.get(element)
        if element in changed and value is not None and value not in allowed:
            refused.append(
                f"{element} {value!r} (a {caller.role} may set {', '.join(sorted(allowed))})"
            )
    for element in selves:
        value = after.get(element)
        named = value.get("reference") if isinstance(value, dict) else None
        if (
            element in changed
            and value is not None
            and (not isinstance(named, str) or local_reference(named, base) != caller.fhir_user)
        ):
            refused.append(f"{element} other than yourself ({caller.fhir_user})")
    return refused


# Interactions and the SMART letter each needs.
INTERACTIONS: dict[str, str] = {
    "read": "r",
    "vread": "r",
    "history": "r",
    "history-instance": "r",
    "search": "s",
    "search-type": "s",
    "search-system": "s",
    "history-type": "s",
    "history-system": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
}
# Interactions that store new content, checked against the content they store.
CONTENT_WRITES = frozenset({"create", "update", "patch"})
# Operations: the letters each needs on the type it runs on. An operation not listed needs all.
OPERATIONS: dict[str, str] = {
    "$everything": "rs",
    "$export": "rs",
    "$lastn": "s",
    "$stats": "s",
    "$meta": "r",
    "$document": "r",
    "$print": "r",
    "$pdf": "r",
    "$qr": "r",
    "$validate": "",
}


def rule_for(role: str, resource_type: str) -> Rule | None:
    table_ = POLICY.get(role, {})
    rule = table_.get(resource_type) or table_.get("*")
    if rule is None or rule.access == NONE:
        return None
    cap = SERVER_WRITTEN.get(resource_type)
    if cap is not None:
        rule = Rule("".join(x for x in rule.letters if x in cap), rule.access)
    return rule


def letters_for(interaction: str) -> str:
    if interaction.startswith("$"):
        return OPERATIONS.get(interaction, "cruds")
    try:
        return INTERACTIONS[interaction]
    except KeyError:
        raise ValueError(f"unknown interaction {interaction!r}") from None


# -- the caller ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: a signed-in user through some client, or a backend service."""

    role: str
    scopes: tuple[Scope, ...]
    user_id: str | None = None
    fhir_user: str | None = None  # "Patient/123", "Practitioner/9"
    patient_id: str | None = None  # the patient this caller is limited to, if any
    client_id: str | None = None
    jti: str | None = None
    other_scopes: frozenset[str] = field(default_factory=frozenset)
    expires_at: int | None = None

    @property
    def who(self) -> str:
        return self.fhir_user or (f"Device/{self.client_id}" if self.client_id else "unknown")


# -- the decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    patient_id: str | None = None  # set when only that patient's compartment is visible
    shared: bool = False  # ...and what is in no patient's compartment (SHARED)


DENY = Decision(False)


def decide(caller: Caller, resource_type: str, interaction: str) -> Decision:
    """The role table AND the token scopes, for one interaction on one type."""
    rule = rule_for(caller.role, resource_type)
    if rule is None:
        return DENY
    needed = letters_for(interaction)
    compartment = False
    for letter in needed:
        if letter not in rule.letters:
            return DENY
        contexts = {s.context for s in caller.scopes if s.grants(resource_type, letter)}
        if not contexts:
            return DENY
        compartment = compartment or contexts == {"patient"}
    if not needed and not any(s.applies_to(resource_type) for s in caller.scopes):
        return DENY
    if not in_compartment_types(resource_type):
        return Decision(True)
    if rule.access in (OWN, SHARED) or compartment:
        if caller.patient_id is None:
            return DENY  # patient-limited, but no patient in context
        return Decision(True, caller.patient_id, shared=rule.access == SHARED)
    return Decision(True)


def allowed(caller: Caller, resource_type: str, interaction: str) -> bool:
    """Whether `caller` may perform `interaction` on some resource of `resource_type`."""
    return decide(caller, resource_type, interaction).allowed


# -- the patient compartment --------------------------------------------------------------------

Restriction = Callable[[FromClause], ColumnElement[bool]]


@cache
def compartment_paths() -> Mapping[str, tuple[str, ...]]:
    data = json.loads((Path(__file__).with_name("patient_compartment.json")).read_text())
    return {name: tuple(paths) for name, paths in data["paths"].items()}


def in_compartment_types(resource_type: str) -> bool:
    return resource_type in compartment_paths()


def restrict(
    caller: Caller, resource_type: str, *, interaction: str = "search"
) -> Restriction | None:
    """None when `caller` sees every `resource_type`; else a WHERE clause factory for a selection
    on the resources table (or an alias of it, with columns resource_type and id)."""
    decision = decide(caller, resource_type, interaction)
    if not decision.allowed:
        return lambda resources: false()
    if decision.patient_id is None:
        return None
    return _compartment_clause(resource_type, decision.patient_id, shared=decision.shared)


def _nobodys(resources: FromClause) -> ColumnElement[bool]:
    """Rows of `resources` in no patient's compartment (SHARED types)."""
    rc = resource_compartments
    return ~exists(
        select(1).where(
            rc.c.resource_type == resources.c.resource_type,
            rc.c.resource_id == resources.c.id,
            rc.c.compartment_type == "Patient",
        )
    )


def patient_clause(
    resources: FromClause, patient_id: str, *, or_deleted: bool = False, shared: bool = False
) -> ColumnElement[bool]:
    """Rows of `resources` (any types) in the patient's compartment, the Patient itself included;
    with `or_deleted`, also the rows of every resource deleted now, which has no compartment;
    with `shared`, also those in no patient's compartment."""
    if shared:
        return or_(
            patient_clause(resources, patient_id, or_deleted=or_deleted), _nobodys(resources)
        )
    rc = resource_compartments
    member = exists(
        select(1).where(
            rc.c.resource_type == resources.c.resource_type,
            rc.c.resource_id == resources.c.id,
            rc.c.compartment_type == "Patient",
            rc.c.compartment_id == patient_id,
        )
    )
    itself = and_(resources.c.resource_type == "Patient", resources.c.id == patient_id)
    if not or_deleted:
        return or_(itself, member)
    current = current_resources
    deleted = exists(
        select(1).where(
            current.c.resource_type == resources.c.resource_type,
            current.c.id == resources.c.id,
            current.c.deleted.is_(True),
        )
    )
    return or_(itself, member, deleted)


def _compartment_clause(resource_type: str, patient_id: str, *, shared: bool) -> Restriction:
    def clause(resources: FromClause) -> ColumnElement[bool]:
        if shared:
            return patient_clause(resources, patient_id, shared=True)
        rc = resource_compartments
        member = exists(
            select(1).where(
                rc.c.resource_type == resources.c.resource_type,
                rc.c.resource_id == resources.c.id,
                rc.c.compartment_type == "Patient",
                rc.c.compartment_id == patient_id,
            )
        )
        if resource_type == "Patient":
            return or_(
                and_(resources.c.resource_type == "Patient", resources.c.id == patient_id), member
            )
        return member

    return clause


def may_see(
    caller: Caller, resource_type: str, resource: dict | str | bytes, *, base: str = ""
) -> bool:
    """Whether `caller` may read this one already-loaded resource."""
    return may_touch(caller, resource_type, resource, "read", base=base)


def may_touch(
    caller: Caller,
    resource_type: str,
    resource: dict | str | bytes,
    interaction: str,
    *,
    base: str = "",
) -> bool:
    """Whether `caller` may perform `interaction` on this resource (for writes: its new content).

    A caller limited to one patient reads what is in that patient's compartment, shared or not,
    but writes only what is in no other patient's: an Appointment a patient books may not list
    another patient, who would then see it, be e-mailed about it, and have it in their record.
    `base` is this server's FHIR base: a reference with it is ours; another server's Patient/1 is
    not our Patient/1."""
    decision = decide(caller, resource_type, interaction)
    if not decision.allowed:
        return False
    if decision.patient_id is None:
        return True
    data = orjson.loads(resource) if isinstance(resource, (str, bytes)) else resource
    patients = patients_of(resource_type, data, base=base)
    if interaction in CONTENT_WRITES:
        return patients == {decision.patient_id}
    return decision.patient_id in patients or (decision.shared and not patients)


def patients_of(resource_type: str, resource: dict, *, base: str = "") -> set[str]:
    """The ids of the patients whose compartment `resource` is in."""
    found: set[str] = set()
    if resource_type == "Patient" and isinstance(resource.get("id"), str):
        found.add(resource["id"])
    for path in compartment_paths().get(resource_type, ()):
        for value in _walk(resource, path.split(".")):
            patient = patient_of(value, base=base)
            if patient:
                found.add(patient)
    return found


_PATIENT_REF = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")


def patient_of(value: object, *, base: str = "") -> str | None:
    """The patient id of a Reference to one of our Patients (relative, or with our FHIR `base`,
    as the search index reads it), else None."""
    if not isinstance(value, dict):
        return None
    reference = value.get("reference")
    if not isinstance(reference, str):
        return None
    match = _PATIENT_REF.fullmatch(local_reference(reference, base))
    return match.group(1) if match else None


def _walk(value: object, steps: list[str]) -> Iterable[object]:
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, steps)
        return
    if not steps:
        yield value
        return
    if isinstance(value, dict) and steps[0] in value:
        yield from _walk(value[steps[0]], steps[1:])


# -- the role ceiling on scopes -----------------------------------------------------------------


def ceiling(role: str, contexts: Iterable[str]) -> tuple[Scope, ...]:
    """The most a token of a `role` caller may carry, as scopes in each of `contexts`."""
    result = []
    for context in contexts:
        for name in POLICY.get(role, {}):
            rule = rule_for(role, name) if name != "*" else POLICY[role]["*"]
            if rule is not None and rule.letters:
                result.append(Scope(context, name, rule.letters))
    return tuple(result)
