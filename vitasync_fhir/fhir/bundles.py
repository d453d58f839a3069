"""Batch and transaction Bundles posted to the FHIR base.

A transaction runs in the request's single unit of work, so any failure rolls back every entry.
Entries are processed in the order the specification gives (DELETE, POST, PUT/PATCH, GET);
`urn:uuid:` and other fullUrls are resolved to the ids they get, and conditional references are
resolved inside the same database transaction. Links to an entry are replaced wherever they are
(http.html#trules): references, any string equal to its fullUrl (uri, url, oid, uuid elements),
and href/src in the narrative; created, updated and patched resources alike.

A batch runs each entry in its own unit of work; an entry that fails, even one whose request
cannot be read, answers its own error and the others still run. GET entries read (answering 304
to ifNoneMatch / ifModifiedSince as a single read does) or search, through the same access checks
as at the top level. `Prefer: return=` shapes the write entries' answers; by default they carry
neither the resource nor an OperationOutcome.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

import orjson
import psycopg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import SYSTEM, Access
from vitasync_fhir.config import Settings
from vitasync_fhir.db import Database, unit_of_work
from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.bundle_entries import PHASE, Entry, at_entry, patch_operations
from vitasync_fhir.fhir.headers import Preference, not_modified
from vitasync_fhir.fhir.models import is_resource_type
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.responses import bundle, bundle_entry
from vitasync_fhir.fhir.search import service as search_service
from vitasync_fhir.fhir.search.service import Search, match_ids
from vitasync_fhir.fhir.service import (
    Resources,
    apply_patch,
    check_resource,
    check_type,
    instant,
    new_id,
    parse_etag,
)
from vitasync_fhir.fhir.store import Version, VersionConflict, Write

log = logging.getLogger(__name__)

# href="..." / src='...' in narrative XHTML: the links http.html#trules has rewritten there.
_NARRATIVE_LINK = re.compile(r"""(?<![\w-])((?:href|src)\s*=\s*)(["'])(.*?)\2""")
# A RESTful fullUrl (its base, then Type/id) and a relative reference Type/id.
_RESTFUL_URL = re.compile(r"(https?://\S+/)[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")
_RELATIVE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")


def _conditional_reference(reference: str) -> tuple[str, str]:
    """(type, criteria) of a conditional reference `Type?criteria`; 400 without a known type."""
    resource_type, _, query = reference.partition("?")
    if not is_resource_type(resource_type):
        named = f"{resource_type!r} is not a resource type" if resource_type else "no type"
        raise outcomes.bad_request(
            f"Conditional reference {reference!r} names {named}; "
            "a conditional reference needs a resource type: Type?criteria"
        )
    return resource_type, query


def _response(status: str, version: Version | None, base: str) -> dict:
    answer: dict = {"status": status}
    if version is not None:
        answer["etag"] = version.etag
        # Bundle.entry.response.lastModified is a FHIR instant, not an HTTP date.
        answer["lastModified"] = instant(version.last_updated)
        if not version.deleted:
            answer["location"] = (
                f"{base}/{version.resource_type}/{version.id}/_history/{version.version_id}"
            )
    return answer


class Transaction:
    """One transaction Bundle, processed in the request's unit of work."""

    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        entries: list[Entry],
        access: Access = SYSTEM,
        *,
        prefer: Preference = Preference(),
    ) -> None:
        self.resources = Resources(session, access)
        self.session = session
        self.settings = settings
        self.base = settings.fhir_base
        self.entries = entries
        self.prefer = prefer
        self.ids: dict[str, str] = {}
        self.conditional_refs: dict[str, str] = {}
        # The POST entries resolved so far by their (type, ifNoneExist): a later entry with the
        # same condition is the same resource (its twin), not a second one.
        self.conditions: dict[tuple[str, tuple], Entry] = {}
        self.needles: tuple[bytes, ...] | None = None

    async def run(self) -> str:
        ordered = sorted(self.entries, key=lambda e: (PHASE[e.method], e.index))
        for entry in self.entries:
            try:
                check_type(entry.resource_type)
            except FhirError as error:
                raise at_entry(entry.index, error) from None
        self._check_targets()
        for entry in ordered:
            await self._guard(entry, self._resolve(entry))
        self._check_targets()  # conditional entries now have ids: two may have met on one
        writes: list[Write] = []
        targets = [
            (e.resource_type, e.resource_id)
            for e in self.entries
            if e.method in ("PUT", "PATCH") and e.resource_id
        ]
        currents = await self.resources.store.current_many(targets)  # type: ignore[arg-type]
        for entry in ordered:
            if entry.method in ("POST", "PUT", "PATCH"):
                write = await self._guard(entry, self._plan(entry, currents))
                if write is not None:
                    writes.append(write)
        try:
            await self.resources.save(writes)
        except VersionConflict as error:
            raise outcomes.conflict(f"{error}; the transaction was not applied") from None
        for entry in ordered:
            if entry.method in ("GET", "HEAD"):
                await self._guard(entry, self._read(entry))
        return self._answer()

    async def run_one(self, entry: Entry) -> None:
        """One batch entry: the same steps as a transaction, for this entry alone."""
        check_type(entry.resource_type)
        await self._guard(entry, self._resolve(entry))
        if entry.method in ("POST", "PUT", "PATCH"):
            keys = (
                [(entry.resource_type, entry.resource_id or "")] if entry.method != "POST" else []
            )
            currents = await self.resources.store.current_many(keys)
            write = await self._guard(entry, self._plan(entry, currents))
            if write is not None:
                try:
                    await self.resources.save([write])
                except VersionConflict as error:
                    raise outcomes.conflict(str(error)) from None
        if entry.method in ("GET", "HEAD"):
            await self._guard(entry, self._read(entry))

    async def _guard(self, entry: Entry, work):  # type: ignore[no-untyped-def]
        try:
            return await work
        except FhirError as error:
            raise at_entry(entry.index, error) from None

    def _check_targets(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        for entry in self.entries:
            if entry.method in ("GET", "HEAD") or not entry.resource_id or entry.twin:
                continue
            if entry.method == "POST" and entry.existing is not None:
                continue  # a conditional create that matched changes nothing
            key = (entry.resource_type, entry.resource_id)
            if key in seen:
                raise at_entry(
                    entry.index,
                    outcomes.bad_request(
                        f"{key[0]}/{key[1]} is also changed by entry {seen[key]}; "
                        "a transaction changes a resource once"
                    ),
                )
            seen[key] = entry.index

    async def _resolve(self, entry: Entry) -> None:
        """Run deletes; decide the id every other write will get."""
        r = self.resources
        if entry.method == "DELETE":
            if entry.query:
                version = await r.conditional_delete(
                    entry.resource_type, entry.query, if_match=entry.if_match
                )
                # What it deleted is a resource this transaction changes: no other entry may.
                entry.resource_id = version.id if version is not None else None
            else:
                version = await r.delete(
                    entry.resource_type, entry.resource_id or "", if_match=entry.if_match
                )
            entry.response = _response("204 No Content", version, self.base)
            entry.note = outcomes.deleted(version is not None)
            return
        if entry.method == "POST":
            if entry.if_none_exist:
                # An earlier entry with the same condition: this one is its resource.
                key = _condition_key(entry.resource_type, entry.if_none_exist)
                entry.twin = self.conditions.get(key)
                if entry.twin is None:
                    self.conditions[key] = entry
                    entry.existing = await r.conditional_match(
                        entry.resource_type, entry.if_none_exist, hold=True
                    )
            if entry.twin is not None:
                entry.resource_id = entry.twin.resource_id
            else:
                entry.resource_id = entry.existing.id if entry.existing else new_id()
        elif entry.method in ("PUT", "PATCH") and entry.query:
            match = await r.conditional_match(entry.resource_type, entry.query, hold=True)
            body_id = (entry.resource or {}).get("id") if entry.method == "PUT" else None
            if match is None and body_id is not None:
                await r.refuse_taken(entry.resource_type, body_id, entry.query)
            entry.resource_id = match.id if match else (body_id or new_id())
        elif entry.method not in ("PUT", "PATCH"):
            return
        if entry.full_url:
            self.ids[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"

    async def _plan(self, entry: Entry, currents: dict[tuple[str, str], Version]) -> Write | None:
        r = self.resources
        assert entry.resource is not None and entry.resource_id is not None
        if entry.twin is not None:  # planned before it: POSTs go in the Bundle's order
            twin = entry.twin
            entry.existing = twin.existing
            entry.response = {**twin.response, "status": "200 OK"}
            if twin.written is not None:
                _wrote(entry, twin.written, created=False)
            return None
        if entry.method == "POST" and entry.existing is not None:
            # Answered with the stored resource: a read of it.
            await r.access.audited(r.session, "read", entry.resource_type, entry.existing.id)
            entry.response = _response("200 OK", entry.existing, self.base)
            _wrote(entry, entry.existing, created=False)
            return None
        current = currents.get((entry.resource_type, entry.resource_id))
        interaction = {"POST": "create", "PUT": "update", "PATCH": "patch"}[entry.method]
        # Before anything about the current version is told (its version, its content in a
        # failed patch): the caller must be allowed to see it.
        await r.permit_write(entry.resource_type, None, interaction, current)
        if entry.if_match:
            expected = parse_etag(entry.if_match, header="ifMatch")
            if not expected.holds(current):
                raise outcomes.precondition_failed(
                    f"{entry.resource_type}/{entry.resource_id} is not at a version "
                    f"ifMatch {entry.if_match!r} accepts"
                )
        if entry.method == "PATCH":
            if current is None or current.content is None:
                raise outcomes.not_found(f"{entry.resource_type}/{entry.resource_id} is not known")
            data = await self._rewrite(
                apply_patch(current.content, patch_operations(entry.resource)), entry.full_url
            )
        else:
            data = await self._rewrite(entry.resource, entry.full_url)
        if entry.method == "POST":
            data = {**data, "id": entry.resource_id}
        elif data.get("id") is None and entry.query:
            data = {**data, "id": entry.resource_id}
        resource = check_resource(data, entry.resource_type)
        if resource.get("id") != entry.resource_id:
            raise outcomes.bad_request("The resource's id must equal the id in request.url")
        before = current.content if current is not None else None
        await r.access.require_writable(entry.resource_type, resource, interaction, current=before)
        if entry.method == "POST":
            write = r.plan_create(entry.resource_type, resource, resource_id=entry.resource_id)
            write = Write(write.version, write.resource, None)
        else:
            write = r.plan_update(
                current, entry.resource_type, entry.resource_id, resource, method=entry.method
            )
            if write is None:  # nothing changes: answered with the stored resource, a read
                await r.access.audited(r.session, "read", entry.resource_type, entry.resource_id)
                entry.existing = current
                entry.response = _response("200 OK", current, self.base)
                _wrote(entry, current, created=False)
                return None
        created = write.replaces is None or bool(current and current.deleted)
        entry.response = _response("201 Created" if created else "200 OK", write.version, self.base)
        _wrote(entry, write.version, created=created)
        return write

    async def _rewrite(self, resource: dict, full_url: str | None) -> dict:
        """The resource with every link to a bundle entry, and every conditional reference,
        replaced by the id it names. A relative reference in an entry whose fullUrl is a RESTful
        URL names first the entry at that fullUrl's base (bundle.html#references)."""
        text = orjson.dumps(resource)
        if self.needles is None:  # every entry has its id by now: _plan runs after _resolve
            self.needles = tuple({_needle(full_url) for full_url in self.ids})
        # Most resources of a large import hold no link at all: skip them without a walk.
        if b'"reference"' not in text and not any(n in text for n in self.needles):
            return resource
        restful = _RESTFUL_URL.fullmatch(full_url or "")
        return await self._walk(resource, depth=0, base=restful[1] if restful else None)

    async def _walk(self, node, depth: int, base: str | None):  # type: ignore[no-untyped-def]
        if depth > 64:
            raise FhirError(400, "too-costly", "The resource is nested too deeply")
        if isinstance(node, str):  # uri, url, oid, uuid...: only a whole fullUrl is a link
            return self.ids.get(node, node)
        if isinstance(node, list):
            return [await self._walk(item, depth + 1, base) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out[key] = await self._target(value, base)
            elif key == "div" and isinstance(value, str):  # only Narrative has a div
                out[key] = _NARRATIVE_LINK.sub(self._narrative_link, value)
            else:
                out[key] = await self._walk(value, depth + 1, base)
        return out

    def _narrative_link(self, match: re.Match[str]) -> str:
        target = self.ids.get(match.group(3))
        if target is None:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{target}{match.group(2)}"

    async def _target(self, reference: str, base: str | None) -> str:
        if reference in self.ids:
            return self.ids[reference]
        if base is not None and _RELATIVE.fullmatch(reference):
            target = self.ids.get(base + reference)
            if target is not None:
                return target
        if reference.startswith("urn:uuid:") or reference.startswith("urn:oid:"):
            raise outcomes.bad_request(f"Reference {reference!r} names no entry of this Bundle")
        if "?" in reference and not reference.startswith(("#", "http://", "https://")):
            if reference not in self.conditional_refs:
                resource_type, query = _conditional_reference(reference)
                access = self.resources.access
                await access.require(resource_type, "search")
                ids = await match_ids(
                    self.session, resource_type, query, limit=2, restrict=access.restriction()
                )
                if len(ids) != 1:
                    found = "no resource" if not ids else "more than one resource"
                    raise FhirError(
                        412 if ids else 400,
                        "processing",
                        f"Conditional reference {reference!r} matches {found}",
                    )
                self.conditional_refs[reference] = f"{resource_type}/{ids[0]}"
            return self.conditional_refs[reference]
        return reference

    async def _read(self, entry: Entry) -> None:
        if entry.resource_id is None:
            await self._search(entry)
            return
        r = self.resources
        if entry.vid:
            version = await r.vread(entry.resource_type, entry.resource_id, entry.vid)
        else:
            version = await r.read(entry.resource_type, entry.resource_id)
        if not_modified(
            version,
            if_none_match=entry.if_none_match,
            if_modified_since=entry.if_modified_since,
        ):
            entry.response = _response("304 Not Modified", version, self.base)
            return
        entry.response = _response("200 OK", version, self.base)
        entry.body = version.content if entry.method == "GET" else None

    async def _search(self, entry: Entry) -> None:
        """The searchset a search of the type answers at the top level, through the same access
        checks and audit (search.service.search_for)."""
        pairs = parse_qsl(entry.query or "", keep_blank_values=True)
        search = Search(
            (entry.resource_type,), pairs, entry.resource_type, lenient=self.prefer.lenient
        )
        access = self.resources.access
        body = await search_service.search_for(
            access, self.session, self.settings, search, query=entry.query
        )
        entry.response = {"status": "200 OK"}
        entry.body = body if entry.method == "GET" else None

    def _answer(self) -> str:
        items = []
        for entry in self.entries:
            full_url = None
            if entry.resource_id and entry.method != "DELETE":
                full_url = f"{self.base}/{entry.resource_type}/{entry.resource_id}"
            items.append(_answered(entry, full_url, self.prefer))
        return bundle(bundle_type="transaction-response", entries=items)


def _condition_key(resource_type: str, condition: str) -> tuple[str, tuple]:
    return resource_type, tuple(sorted(parse_qsl(condition.lstrip("?"), keep_blank_values=True)))


def _wrote(entry: Entry, version: Version, *, created: bool) -> None:
    entry.written = version
    entry.note = outcomes.written(version.resource_type, version.id, created=created)


def _needle(full_url: str) -> bytes:
    """A prefix of `full_url` as JSON text spells it (its scheme, or its base up to the type):
    any resource linking to the entry holds it, and an entry's fullUrls share a few."""
    head = full_url.rsplit("/", 2)[0] if "/" in full_url else full_url.rsplit(":", 1)[0]
    return orjson.dumps(head)[1:-1]


def _answered(entry: Entry, full_url: str | None, prefer: Preference) -> str:
    """One response entry; a write's resource or outcome as `Prefer: return=` asks."""
    resource, response = entry.body, entry.response
    if prefer.returns == "representation" and entry.written is not None:
        resource = entry.written.content
    elif prefer.returns == "OperationOutcome" and entry.note is not None:
        response = {**response, "outcome": entry.note}
    return bundle_entry(full_url=full_url, resource=resource, response=response)


def _failure(error: FhirError) -> dict:
    return {"status": str(error.status), "outcome": outcomes.outcome(error.issues)}


async def transaction(
    session: AsyncSession,
    settings: Settings,
    entries: list[Entry],
    access: Access = SYSTEM,
    *,
    prefer: Preference = Preference(),
) -> str:
    return await Transaction(session, settings, entries, access, prefer=prefer).run()


async def batch(
    database: Database,
    entries: list[Entry],
    access: Access = SYSTEM,
    *,
    prefer: Preference = Preference(),
) -> str:
    """Each entry on its own: one failing entry answers its error and the others still apply."""
    base = database.settings.fhir_base
    items = []
    for entry in entries:
        failure = (
            _failure(entry.error)
            if entry.error is not None
            else await _alone(database, entry, access, prefer)
        )
        if failure is not None:  # names nothing: no resource was made or changed
            items.append(bundle_entry(response=failure))
            continue
        full_url = (
            f"{base}/{entry.resource_type}/{entry.resource_id}" if entry.resource_id else None
        )
        items.append(_answered(entry, full_url, prefer))
    return bundle(bundle_type="batch-response", entries=items)


async def _alone(
    database: Database, entry: Entry, access: Access, prefer: Preference
) -> dict | None:
    """Run one batch entry in its own unit of work; the response of its failure, if it fails."""
    try:
        async with database.sessions() as session:
            async with unit_of_work(session):
                work = Transaction(session, database.settings, [entry], access, prefer=prefer)
                await work.run_one(entry)
    except FhirError as error:
        return _failure(error)
    except (SQLAlchemyError, psycopg.Error, OSError):
        raise  # the database: errors.py answers it (503 when it is away)
    except Exception:  # noqa: BLE001 - a bug in one entry: the others' answers still count
        log.exception("batch entry %s %s failed", entry.method, entry.resource_type)
        return _failure(FhirError(500, "exception", "Internal server error"))
    return None
