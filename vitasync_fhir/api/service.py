"""The /api rules: simple JSON in and out through a mapping, FHIR resources underneath.

Every read and write goes through `Resources` with the caller's `Access`, so the role policy of
/fhir holds here too; lists go through the search engine with the same restriction.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth import policy
from vitasync_fhir.auth.access import Access
from vitasync_fhir.config import Settings
from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.outcomes import FhirError, Issue
from vitasync_fhir.fhir.search.params import lookup, parse_query
from vitasync_fhir.fhir.search.service import find
from vitasync_fhir.fhir.service import Resources, Saved, instant
from vitasync_fhir.fhir.store import Version
from vitasync_fhir.mapping.convert import (
    FieldError,
    InvalidInput,
    filled_on_create,
    from_fhir,
    is_of_kind,
    patched,
    to_fhir,
    unpaired,
)
from vitasync_fhir.mapping.spec import Mapping

MAX_PER_PAGE = 100
LIST_PARAMS = {"page", "per_page", "sort", "from", "to"}
MAX_NUMBER = 1_000_000_000  # a page past this would ask the database for an offset it cannot hold
# What an /api filter value looks like, by the type of the FHIR search parameter behind it.
FILTER_VALUES = {
    "date": "a date like 2024-05-01, or a date and time like 2024-05-01T09:30:00Z",
    "token": "a code, or system|code",
    "reference": "an id",
    "string": "text",
    "number": "a number",
    "quantity": "a number",
}


def invalid(errors: InvalidInput) -> FhirError:
    issues = [Issue("invalid", e.message, expression=e.field) for e in errors.errors]
    return FhirError(422, "invalid", issues[0].diagnostics, issues=issues)


def simple(mapping: Mapping, version: Version) -> dict:
    assert version.content is not None
    return from_fhir(mapping, orjson.loads(version.content))


class ApiResources:
    """One /api resource (a mapping) for one caller."""

    def __init__(
        self, mapping: Mapping, session: AsyncSession, access: Access, settings: Settings
    ) -> None:
        self.mapping = mapping
        self.session = session
        self.access = access
        self.settings = settings
        self.resources = Resources(session, access)

    @property
    def fhir_type(self) -> str:
        return self.mapping.resource

    async def list(self, query: dict[str, str]) -> dict:
        page, per_page = _positive(query, "page", 1), _positive(query, "per_page", 20)
        if per_page > MAX_PER_PAGE:
            raise FhirError(
                400, "invalid", f"per_page is at most {MAX_PER_PAGE}", expression="per_page"
            )
        pairs = self._search_pairs(query)
        await self.access.require(self.fhir_type, "search")
        contents, total = await find(
            self.session,
            self.settings,
            self.fhir_type,
            pairs,
            offset=(page - 1) * per_page,
            limit=per_page,
            restrict=self.access.restriction(),
        )
        found = [orjson.loads(c) for c in contents]
        # As a FHIR search's: the query it ran and the patients whose records the page showed
        # (read off the records, parsed here anyway).
        shown = []
        if self.access.audits(self.fhir_type):
            shown = self.access.patients_shown((self.fhir_type, record) for record in found)
        await self.access.audited(
            self.session, "search-type", self.fhir_type, query=urlencode(pairs) or None, more=shown
        )
        items = [from_fhir(self.mapping, r) for r in found]
        return {"items": items, "page": page, "per_page": per_page, "total": total}

    def _search_pairs(self, query: dict[str, str]) -> list[tuple[str, str]]:
        listing = self.mapping.listing
        pairs: list[tuple[str, str]] = []
        unknown = sorted(set(query) - set(listing.filters) - LIST_PARAMS)
        if unknown:
            raise FhirError(
                400,
                "invalid",
                f"Unknown filter(s) {unknown}; use {sorted(listing.filters)}",
                expression=unknown[0],
            )
        for name, value in query.items():
            if name in listing.filters:
                fhir = (listing.filters[name], self._filter_value(name, value))
                pairs.append(self._checked(name, value, fhir))
        kinds = self.mapping.kinds
        if kinds and kinds.field not in query:
            # Only what the kinds table names: a lab result or a survey is no vital sign.
            every = ",".join(f"{k.system}|{k.code}" for k in kinds.values.values())
            pairs.append((listing.filters.get(kinds.field, "code"), every))
        for name, prefix in (("from", "ge"), ("to", "le")):
            if name in query:
                if not listing.date:
                    raise FhirError(
                        400,
                        "invalid",
                        f"{self.mapping.name} has no date to filter",
                        expression=name,
                    )
                fhir = (listing.date, f"{prefix}{query[name]}")
                pairs.append(self._checked(name, query[name], fhir))
        sort = query.get("sort")
        if sort:
            keys = []
            for key in sort.split(","):
                field = key.lstrip("-")
                if field not in listing.sort:
                    raise FhirError(
                        400,
                        "invalid",
                        f"Cannot sort by {field!r}; use {sorted(listing.sort)}",
                        expression="sort",
                    )
                keys.append(("-" if key.startswith("-") else "") + listing.sort[field])
            pairs.append(("_sort", ",".join(keys)))
        return pairs

    def _checked(self, name: str, sent: str, fhir: tuple[str, str]) -> tuple[str, str]:
        """The FHIR pair of one /api filter, read as the search will read it; a problem names
        the /api parameter and the value as sent, not the FHIR pair they became."""
        try:
            parse_query((self.fhir_type,), [fhir], base=self.settings.fhir_base, max_count=1)
        except FhirError:
            if "\x00" in sent:
                message = f"{name} cannot contain NUL characters"
            else:
                expected = FILTER_VALUES.get(_param_type(self.fhir_type, fhir[0]), "a valid value")
                message = f"{name}: {sent!r} is not {expected}"
            raise FhirError(400, "invalid", message, expression=name) from None
        return fhir

    def _filter_value(self, name: str, value: str) -> str:
        kinds = self.mapping.kinds
        if kinds and name == kinds.field:
            kind = kinds.values.get(value)
            if kind is None:
                raise FhirError(
                    400, "invalid", f"{name} must be one of {sorted(kinds.values)}", expression=name
                )
            return f"{kind.system}|{kind.code}"
        return value

    async def get(self, resource_id: str) -> dict:
        return simple(self.mapping, await self.current(resource_id))

    async def current(self, resource_id: str) -> Version:
        """The record, if it is one of this /api resource's: a mapping with kinds (vitals) owns
        only the Observations of its kinds, not a lab result or a survey (404, as the list)."""
        found = await self.resources.read(self.fhir_type, resource_id)
        if self.mapping.kinds and not is_of_kind(self.mapping, orjson.loads(found.content or "{}")):
            raise outcomes.not_found(f"{self.fhir_type}/{resource_id} is not known")
        return found

    async def create(self, body: object) -> dict:
        try:
            resource = to_fhir(self.mapping, self.filled(body))
        except InvalidInput as errors:
            raise invalid(errors) from None
        # Who may write this, before ids are looked up: what an id names is told only to them.
        await self.access.require(self.fhir_type, "create")
        await self.access.require_writable(self.fhir_type, resource, "create")
        await self.check_references(resource)
        async with self._in_api_terms():
            saved = await self.resources.create(self.fhir_type, resource)
        return simple(self.mapping, saved.version)

    def filled(self, body: object) -> object:
        """A create's body with what it left out filled as the mapping says (`on_create`)."""
        caller = self.access.caller
        return filled_on_create(
            self.mapping,
            body,
            now=instant(datetime.now(UTC)),
            caller=caller.fhir_user if caller else None,
        )

    async def check_references(self, resource: dict, existing: dict | None = None) -> None:
        """422 for an id field (patient_id, doctor_id...) set to an id no such record has: a
        prescription for a patient who is not here would be no one's. A link to a record of
        patient data (record_id: a visit) must be to one of the same patient. Ids kept from
        `existing` are not looked up again, unless the patient changed. (A caller limited to one
        patient names no other: the write rule, asked first, answers 403 alike for another
        patient and for none.)"""
        now = from_fhir(self.mapping, resource)
        before = from_fhir(self.mapping, existing) if existing else {}
        patients = self._patients(now)
        moved = patients != self._patients(before)
        errors = []
        for name, spec in self.mapping.fields.items():
            value = now.get(name)
            kept = value == before.get(name)
            if spec.type != "reference" or value is None or (kept and not moved):
                continue
            found = await self.resources.store.current(spec.target, value)  # type: ignore[arg-type]
            if found is None or found.deleted:
                if not kept:  # a link already broken does not stop moving the record
                    errors.append(FieldError(name, f"names no {spec.target} known here"))
                continue
            problem = self._elsewhere(spec.target, found, patients)  # type: ignore[arg-type]
            if problem:
                errors.append(FieldError(name, problem))
        if errors:
            raise invalid(InvalidInput(errors))

    def _patients(self, record: dict) -> set[str]:
        """The patients a simple record is of: its Patient id fields (patient_id)."""
        fields = self.mapping.fields.items()
        return {
            record[n]
            for n, spec in fields
            if spec.target == "Patient" and record.get(n) is not None
        }

    def _elsewhere(self, target: str, found: Version, patients: set[str]) -> str | None:
        """Why a link may not name `found`: it is another patient's (a prescription of one
        patient made at another's visit). A caller who may not see it hears of it as of none."""
        if target == "Patient" or not patients:
            return None
        content = orjson.loads(found.content or "{}")
        theirs = policy.patients_of(target, content, base=self.access.base)
        if not theirs or patients <= theirs:
            return None  # a record of no patient (a partner's), or of this one
        if not self.access.may_see(target, found.content, "read"):
            return f"names no {target} known here"
        return "belongs to another patient"

    @asynccontextmanager
    async def _in_api_terms(self) -> AsyncIterator[None]:
        """A 422 of the FHIR layer (validation, domain rules) names the /api field it concerns,
        not the FHIR path: refills, not MedicationRequest.dispenseRequest.numberOfRepeatsAllowed."""
        try:
            yield
        except FhirError as error:
            if error.status != 422:
                raise
            issues = [
                Issue(
                    i.code,
                    i.diagnostics,
                    severity=i.severity,
                    expression=self._field_of(i.expression),
                )
                for i in error.issues
            ]
            raise FhirError(422, issues[0].code, issues[0].diagnostics, issues=issues) from None

    def _field_of(self, expression: str | None) -> str | None:
        if not expression:
            return expression
        plain = re.sub(r"\[[^\]]*\]", "", expression).removeprefix(f"{self.fhir_type}.")
        for name, spec in self.mapping.fields.items():
            own = re.sub(r"\[[^\]]*\]", "", spec.path)
            if plain == own or plain.startswith(own + "."):
                return name
        return expression

    async def update(self, resource_id: str, body: object, *, partial: bool = False) -> dict:
        await self.access.require(self.fhir_type, "update", resource_id=resource_id)
        current = await self.current(resource_id)
        existing = orjson.loads(current.content or "{}")
        given = body if isinstance(body, dict) else {}
        sent = set(given) if partial else None
        if partial:
            before = from_fhir(self.mapping, existing)
            errors = unpaired(self.mapping, before, given)
            if errors:
                raise invalid(InvalidInput(errors))
            given = patched(self.mapping, before, given)
        version = given.get("version")
        if version is not None and str(version) != str(current.version_id):
            raise FhirError(
                409,
                "conflict",
                f"The record is at version {current.version_id}, not {version}; read it again",
            )
        try:
            resource = to_fhir(self.mapping, given, existing=existing, sent=sent)
        except InvalidInput as errors:
            raise invalid(errors) from None
        await self.access.require_writable(
            self.fhir_type, resource, "update", current=current.content
        )
        await self.check_references(resource, existing)
        saved = await self.save(resource_id, resource, current)
        return simple(self.mapping, saved.version)

    async def save(
        self,
        resource_id: str,
        resource: dict,
        current: Version,
        *,
        conflict: str = "The record changed since you read it; read it again",
    ) -> Saved:
        """Write over `current`; 409 with `conflict` when another request changed it since it
        was read, as a stale `version` answers (the FHIR layer's 412 is for If-Match)."""
        try:
            async with self._in_api_terms():
                return await self.resources.update(
                    self.fhir_type, resource_id, resource, if_match=current.etag
                )
        except FhirError as error:
            if error.status == 412:
                raise FhirError(409, "conflict", conflict) from None
            raise

    async def delete(self, resource_id: str) -> None:
        await self.access.require(self.fhir_type, "delete", resource_id=resource_id)
        await self.current(resource_id)
        await self.resources.delete(self.fhir_type, resource_id)


def _param_type(resource_type: str, code: str) -> str | None:
    param = lookup((resource_type,), code)
    return param.type if param else None


def _positive(query: dict[str, str], name: str, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_NUMBER:
        raise FhirError(
            400, "invalid", f"{name} must be a whole number from 1 to {MAX_NUMBER}", expression=name
        )
    return int(value)
