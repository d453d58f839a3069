"""The caller's policy for one request: the one layer every FHIR and /api path goes through.

`Resources` (fhir/service.py) carries an `Access` and asks it before each read and write; search
and history take its `restriction()` so base results, includes, chains and `_has` only ever
select what the caller may see; bundles, operations and documents go through the same
`Resources`. `Access.system()` is the server itself (background tasks, start-up), which sees all.

A type the caller may not use at all answers 403; a single resource the caller may not see
answers 404, so its existence does not leak. Every access to patient data is audited: successes
in the request's transaction, denials in a transaction of their own so they survive the rollback.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import ColumnElement, and_, false, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import FromClause

from vitasync_fhir.auth import audit, policy
from vitasync_fhir.auth.deps import CallerDep
from vitasync_fhir.auth.policy import Caller
from vitasync_fhir.auth.trail import AuditTrail
from vitasync_fhir.db import Database, SessionDep, after_commit, after_end
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.subscriptions import ownership

AUDITED_PATIENTS = 100  # at most this many patients named in one AuditEvent of a list


class Access:
    def __init__(
        self,
        caller: Caller | None,
        *,
        source_ip: str | None = None,
        database: Database | None = None,
        session: AsyncSession | None = None,
        trail: AuditTrail | None = None,
    ) -> None:
        self.caller = caller
        self.source_ip = source_ip
        self.database = database
        self.session = session
        self.trail = trail

    @classmethod
    def system(cls) -> Access:
        return cls(None)

    @classmethod
    def of_request(
        cls, request: Request, caller: Caller, session: AsyncSession | None = None
    ) -> Access:
        host = request.client.host if request.client else None
        return cls(
            caller,
            source_ip=host,
            database=request.app.state.db,
            session=session,
            trail=getattr(request.app.state, "audit_trail", None),
        )

    @property
    def is_system(self) -> bool:
        return self.caller is None

    @property
    def base(self) -> str:
        """This server's FHIR base, for references written with it (none known: relative only)."""
        return self.database.settings.fhir_base if self.database is not None else ""

    # -- decisions ---------------------------------------------------------------------------

    async def require(
        self, resource_type: str, interaction: str, *, resource_id: str | None = None
    ) -> None:
        """403 unless the caller may perform `interaction` on some `resource_type`."""
        if self.caller is None or policy.allowed(self.caller, resource_type, interaction):
            return
        await self.record_denial(resource_type, interaction, resource_id)
        raise FhirError(
            403, "forbidden", f"Your role may not {interaction} {resource_type} resources"
        )

    async def require_visible(
        self,
        resource_type: str,
        resource_id: str,
        content: str | dict | None,
        interaction: str = "read",
        *,
        unknown: str | None = None,
    ) -> None:
        """404 unless the caller may see this one resource (existence must not leak): with the
        text `unknown`, which the caller gives when a missing resource would answer another."""
        if self.caller is None or content is None:
            return
        if self.may_see(resource_type, content, interaction) and await self._owned(
            resource_type, resource_id
        ):
            return
        await self.record_denial(resource_type, interaction, resource_id)
        raise FhirError(404, "not-found", unknown or f"{resource_type}/{resource_id} is not known")

    def may_see(
        self, resource_type: str, content: str | dict | None, interaction: str = "history"
    ) -> bool:
        """Whether the role policy lets the caller see this content, without auditing or
        refusing: a history lists each version only to whom its own content is visible (a
        resource may have moved between patients). Ownership is `require_visible`'s."""
        return (
            self.caller is None
            or content is None
            or policy.may_touch(self.caller, resource_type, content, interaction, base=self.base)
        )

    def limited(self, resource_types: Iterable[str], interaction: str) -> bool:
        """Whether the caller may not see all of some of these types (a patient's part only)."""
        caller = self.caller
        if caller is None:
            return False
        decisions = (policy.decide(caller, name, interaction) for name in resource_types)
        return any(not d.allowed or d.patient_id is not None for d in decisions)

    async def _owned(self, resource_type: str, resource_id: str) -> bool:
        """Whether the caller owns this one, for types that belong to their creator."""
        if resource_type not in ownership.OWNED or ownership.sees_all(self.caller):
            return True
        if self.session is None or self.caller is None:
            return self.caller is None
        return await ownership.owns(self.session, self.caller, resource_id)

    async def require_writable(
        self,
        resource_type: str,
        resource: dict,
        interaction: str,
        *,
        current: str | None = None,
    ) -> None:
        """403 unless the caller may write this content (e.g. into their own compartment only)
        over the `current` content (JSON text; a role may change only some elements)."""
        if self.caller is None:
            return
        if not policy.may_touch(self.caller, resource_type, resource, interaction, base=self.base):
            await self.record_denial(resource_type, interaction, resource.get("id"))
            raise FhirError(403, "forbidden", f"You may not {interaction} this {resource_type}")
        beyond = policy.changed_beyond(self.caller, resource_type, current, resource)
        if beyond:
            await self.record_denial(resource_type, interaction, resource.get("id"))
            allowed = ", ".join(sorted(policy.CHANGES[(self.caller.role, resource_type)]))
            raise FhirError(
                403,
                "forbidden",
                f"A {self.caller.role} may change only {allowed} of a {resource_type}; "
                f"this {interaction} changes {', '.join(beyond)}",
            )
        refused = policy.refused_values(
            self.caller, resource_type, current, resource, base=self.base
        )
        if refused:
            await self.record_denial(resource_type, interaction, resource.get("id"))
            raise FhirError(
                403, "forbidden", f"This {interaction} may not set {'; '.join(refused)}"
            )

    def restriction(self, interaction: str = "search"):  # type: ignore[no-untyped-def]
        """The search engine's `restrict` hook: (table, types) -> WHERE clause, or None."""
        caller = self.caller
        if caller is None:
            return None

        def clause(table: FromClause, types: Iterable[str]) -> ColumnElement[bool] | None:
            free, limited, shared, patient = [], [], [], None
            for name in types:
                decision = policy.decide(caller, name, interaction)
                if not decision.allowed:
                    continue
                if decision.patient_id is None:
                    free.append(name)
                else:
                    (shared if decision.shared else limited).append(name)
                    patient = decision.patient_id
            wanted = set(types)
            # Subscriptions and the like: only the caller's own, unless they see all.
            owned = [] if ownership.sees_all(caller) else [n for n in free if n in ownership.OWNED]
            free = [n for n in free if n not in owned]
            if set(free) == wanted:
                return None
            parts = []
            if free:
                parts.append(table.c.resource_type.in_(free))
            # A deleted resource has left every compartment; in a history its versions are
            # kept here and judged one by one against their content (fhir/history.py).
            deleted = interaction.startswith("history")
            if limited and patient is not None:
                member = policy.patient_clause(table, patient, or_deleted=deleted)
                parts.append(and_(table.c.resource_type.in_(limited), member))
            if shared and patient is not None:
                member = policy.patient_clause(table, patient, or_deleted=deleted, shared=True)
                parts.append(and_(table.c.resource_type.in_(shared), member))
            if owned:
                parts.append(
                    and_(table.c.resource_type.in_(owned), ownership.clause(table, caller))
                )
            return or_(*parts) if parts else false()

        return clause

    # -- audit -------------------------------------------------------------------------------

    def audits(self, resource_type: str | None) -> bool:
        """Whether `audited` records an access of this type (of patient data, by a caller):
        what only its event needs is worked out only then."""
        return self.caller is not None and _patient_data(resource_type)

    def patients_shown(self, records: Iterable[tuple[str, dict]]) -> list[tuple[str, str]]:
        """The Patients whose compartments hold these (type, content) records, as the `more` of
        an AuditEvent: at most AUDITED_PATIENTS, in id order."""
        patients: set[str] = set()
        for resource_type, record in records:
            patients |= policy.patients_of(resource_type, record, base=self.base)
        return [("Patient", patient) for patient in sorted(patients)[:AUDITED_PATIENTS]]

    async def audited(
        self,
        session: AsyncSession,
        action: str,
        resource_type: str | None,
        resource_id: str | None = None,
        *,
        query: str | None = None,
        more: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Record a successful access to patient data in the request's transaction.

        `more` lists further (type, id) pairs of the same action, recorded as entities of the
        same AuditEvent: a transaction of 300 entries writes a few events, not 300.
        """
        if not self.audits(resource_type):
            return
        event = self._event("success", action, resource_type, resource_id, query=query)
        extra = [
            {
                "type": {"system": "http://hl7.org/fhir/resource-types", "code": t},
                "what": {"reference": f"{t}/{i}"},
            }
            for t, i in more
            if _patient_data(t)
        ]
        if extra:
            event.setdefault("entity", []).extend(extra)
        if self.trail is not None and action not in WRITES:
            trail = self.trail
            after_commit(session, lambda: trail.add(event))  # only what was really answered
            return
        await audit.record(session, event)

    async def settle_audit(self, types: Iterable[str] | None) -> None:
        """Before AuditEvents are read: store what this worker's trail still holds."""
        if self.trail is not None and (types is None or "AuditEvent" in types):
            await self.trail.settle()

    def _event(
        self,
        outcome: str,
        action: str,
        resource_type: str | None,
        resource_id: str | None,
        *,
        query: str | None = None,
    ) -> dict:
        return audit.audit_event(
            self.caller,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            outcome=outcome,
            source_ip=self.source_ip,
            query=query,
        )

    async def record_denial(
        self,
        resource_type: str | None,
        action: str,
        resource_id: str | None = None,
        *,
        query: str | None = None,
    ) -> None:
        """Audit a refusal (outcome 4, denied): apart from the request, which rolls back."""
        if self.database is None:
            return
        event = self._event("denied", action, resource_type, resource_id, query=query)
        if self.trail is not None:
            self.trail.add(event)
            return
        database = self.database
        if self.session is None:
            await audit.record_apart(database, event)
            return
        # After the request's transaction ends: it rolls back on the denial, and on SQLite a
        # second writer would wait behind the request's own uncommitted writes.
        after_end(self.session, lambda: audit.record_apart(database, event))


# Audited in the write's own transaction; every other action goes to the trail.
WRITES = frozenset({"create", "update", "patch", "delete"})


def _patient_data(resource_type: str | None) -> bool:
    if resource_type == "AuditEvent":  # reading the audit trail is not itself audited
        return False
    return (
        resource_type is None
        or resource_type == "Patient"
        or policy.in_compartment_types(resource_type)
    )


SYSTEM = Access.system()


async def _request_access(request: Request, caller: CallerDep, session: SessionDep) -> Access:
    return Access.of_request(request, caller, session)


AccessDep = Annotated[Access, Depends(_request_access)]
