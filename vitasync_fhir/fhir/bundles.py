"""Batch and transaction Bundles posted to the FHIR base.

A transaction runs in the request's single unit of work, so any failure rolls back every entry.
Entries are processed in the order the specification gives (DELETE, POST, PUT/PATCH, GET);
`urn:uuid:` and other fullUrls are resolved to the ids they get, and conditional references are
resolved inside the same database transaction. A batch runs each entry in its own unit of work.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass, field

import orjson
import psycopg
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from vitasync_fhir.auth.access import SYSTEM, Access
from vitasync_fhir.db import Database, unit_of_work
from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.models import is_resource_type
from vitasync_fhir.fhir.outcomes import FhirError, Issue
from vitasync_fhir.fhir.responses import bundle, bundle_entry
from vitasync_fhir.fhir.search.service import match_ids
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

PHASE = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
JSON_PATCH = "application/json-patch+json"


@dataclass
class Entry:
    index: int
    method: str
    resource_type: str
    resource_id: str | None
    query: str | None
    vid: str | None
    full_url: str | None
    resource: dict | None
    if_match: str | None
    if_none_exist: str | None
    existing: Version | None = None
    response: dict = field(default_factory=dict)
    body: str | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def _fail(entry_index: int, error: FhirError) -> FhirError:
    issues = [
        Issue(
            code=i.code,
            severity=i.severity,
            diagnostics=f"Bundle.entry[{entry_index}]: {i.diagnostics}",
            expression=f"Bundle.entry[{entry_index}]"
            + (f".resource.{i.expression}" if i.expression else ""),
        )
        for i in error.issues
    ]
    return FhirError(error.status, issues[0].code, issues[0].diagnostics, issues=issues)


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


def _parse_url(url: str, base: str) -> tuple[str, str | None, str | None, str | None]:
    """(type, id, version, query) of an entry's request url."""
    if url.startswith(base):
        url = url[len(base) :]
    path, _, query = url.lstrip("/").partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise outcomes.bad_request(f"request.url {url!r} names no resource type")
    resource_type = parts[0]
    resource_id = parts[1] if len(parts) > 1 else None
    vid = parts[3] if len(parts) == 4 and parts[2] == "_history" else None
    if len(parts) > 2 and vid is None:
        raise outcomes.bad_request(f"request.url {url!r} is not a supported interaction")
    return resource_type, resource_id, vid, query or None


def parse_entries(data: object, base: str) -> tuple[str, list[Entry]]:
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        raise outcomes.bad_request("POST to the base takes a Bundle of type batch or transaction")
    kind = data.get("type")
    if kind not in ("batch", "transaction"):
        raise outcomes.bad_request(
            f"Bundle.type must be batch or transaction, not {kind!r}", expression="Bundle.type"
        )
    raw = data.get("entry", [])
    if not isinstance(raw, list):
        raise outcomes.bad_request("Bundle.entry must be an array", expression="Bundle.entry")
    entries = []
    named: dict[str, int] = {}
    for index, item in enumerate(raw):
        try:
            entry = _entry(index, item, base)
            if entry.full_url in named:  # a reference to it could mean either entry
                raise outcomes.bad_request(
                    f"fullUrl {entry.full_url} is also entry {named[entry.full_url]}'s"
                )
        except FhirError as error:
            raise _fail(index, error) from None
        if entry.full_url:
            named[entry.full_url] = index
        entries.append(entry)
    return kind, entries


def _entry(index: int, item: object, base: str) -> Entry:
    if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
        raise outcomes.bad_request("each entry needs a request with method and url")
    request = item["request"]
    method, url = request.get("method"), request.get("url")
    if method not in PHASE or not isinstance(url, str):
        raise outcomes.bad_request(f"request.method {method!r} / url {url!r} is not supported")
    resource_type, resource_id, vid, query = _parse_url(url, base)
    resource = item.get("resource")
    if method in ("POST", "PUT", "PATCH") and not isinstance(resource, dict):
        raise outcomes.bad_request(f"a {method} entry needs a resource")
    if method == "POST" and (resource_id or query):
        raise outcomes.bad_request("a POST entry's url is the resource type alone")
    if method in ("PUT", "PATCH", "DELETE") and not (resource_id or query):
        raise outcomes.bad_request(f"a {method} entry's url needs an id or search criteria")
    for name in ("ifMatch", "ifNoneExist", "ifNoneMatch", "ifModifiedSince"):
        if request.get(name) is not None and not isinstance(request[name], str):
            raise outcomes.bad_request(f"request.{name} must be a string")
    full_url = item.get("fullUrl")
    return Entry(
        index=index,
        method=method,
        resource_type=resource_type,
        resource_id=resource_id,
        query=query,
        vid=vid,
        full_url=full_url if isinstance(full_url, str) else None,
        resource=resource if isinstance(resource, dict) else None,
        if_match=request.get("ifMatch"),
        if_none_exist=request.get("ifNoneExist"),
    )


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


def _patch_operations(resource: dict) -> list:
    """JSON Patch operations carried in a Binary, as FHIR transactions carry them."""
    if resource.get("resourceType") != "Binary" or resource.get("contentType") != JSON_PATCH:
        raise outcomes.bad_request("a PATCH entry carries a Binary of application/json-patch+json")
    try:
        operations = orjson.loads(base64.b64decode(resource.get("data", ""), validate=True))
    except (TypeError, ValueError, orjson.JSONDecodeError):
        raise outcomes.bad_request("the Binary's data is not a base64 JSON Patch") from None
    if not isinstance(operations, list):
        raise outcomes.bad_request("a JSON Patch is an array of operations")
    return operations


class Transaction:
    """One transaction Bundle, processed in the request's unit of work."""

    def __init__(
        self, session: AsyncSession, base: str, entries: list[Entry], access: Access = SYSTEM
    ) -> None:
        self.resources = Resources(session, access)
        self.session = session
        self.base = base
        self.entries = entries
        self.ids: dict[str, str] = {}
        self.conditional_refs: dict[str, str] = {}

    async def run(self) -> str:
        ordered = sorted(self.entries, key=lambda e: (PHASE[e.method], e.index))
        for entry in self.entries:
            try:
                check_type(entry.resource_type)
            except FhirError as error:
                raise _fail(entry.index, error) from None
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
            raise _fail(entry.index, error) from None

    def _check_targets(self) -> None:
        seen: dict[tuple[str, str], int] = {}
        for entry in self.entries:
            if entry.method in ("GET", "HEAD") or not entry.resource_id:
                continue
            key = (entry.resource_type, entry.resource_id)
            if key in seen:
                raise _fail(
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
                version = await r.conditional_delete(entry.resource_type, entry.query)
            else:
                version = await r.delete(
                    entry.resource_type, entry.resource_id or "", if_match=entry.if_match
                )
            entry.response = _response("204 No Content", version, self.base)
            return
        if entry.method == "POST":
            if entry.if_none_exist:
                entry.existing = await r.conditional_match(entry.resource_type, entry.if_none_exist)
            entry.resource_id = entry.existing.id if entry.existing else new_id()
        elif entry.method in ("PUT", "PATCH") and entry.query:
            match = await r.conditional_match(entry.resource_type, entry.query)
            body_id = (entry.resource or {}).get("id") if entry.method == "PUT" else None
            entry.resource_id = match.id if match else (body_id or new_id())
        elif entry.method not in ("PUT", "PATCH"):
            return
        if entry.full_url:
            self.ids[entry.full_url] = f"{entry.resource_type}/{entry.resource_id}"

    async def _plan(self, entry: Entry, currents: dict[tuple[str, str], Version]) -> Write | None:
        r = self.resources
        assert entry.resource is not None and entry.resource_id is not None
        if entry.method == "POST" and entry.existing is not None:
            entry.response = _response("200 OK", entry.existing, self.base)
            return None
        current = currents.get((entry.resource_type, entry.resource_id))
        interaction = {"POST": "create", "PUT": "update", "PATCH": "patch"}[entry.method]
        # Before anything about the current version is told (its version, its content in a
        # failed patch): the caller must be allowed to see it.
        await r.permit_write(entry.resource_type, None, interaction, current)
        if entry.if_match:
            expected = parse_etag(entry.if_match, header="ifMatch")
            if current is None or current.version_id != expected:
                raise outcomes.precondition_failed(
                    f"{entry.resource_type}/{entry.resource_id} is not at version {expected}"
                )
        if entry.method == "PATCH":
            if current is None or current.content is None:
                raise outcomes.not_found(f"{entry.resource_type}/{entry.resource_id} is not known")
            data = apply_patch(current.content, _patch_operations(entry.resource))
        else:
            data = await self._rewrite(entry.resource)
        if entry.method == "POST":
            data = {**data, "id": entry.resource_id}
        elif data.get("id") is None and entry.query:
            data = {**data, "id": entry.resource_id}
        resource = check_resource(data, entry.resource_type)
        if resource.get("id") != entry.resource_id:
            raise outcomes.bad_request("The resource's id must equal the id in request.url")
        await r.access.require_writable(entry.resource_type, resource, interaction)
        if entry.method == "POST":
            write = r.plan_create(entry.resource_type, resource, resource_id=entry.resource_id)
            write = Write(write.version, write.resource, None)
        else:
            write = r.plan_update(current, entry.resource_type, entry.resource_id, resource)
            if write is None:
                entry.existing = current
                entry.response = _response("200 OK", current, self.base)
                return None
        created = write.replaces is None or bool(current and current.deleted)
        entry.response = _response("201 Created" if created else "200 OK", write.version, self.base)
        return write

    async def _rewrite(self, resource: dict) -> dict:
        """The resource with every reference to a bundle entry or a search replaced by its id."""
        text = orjson.dumps(resource)
        if b'"reference"' not in text:
            return resource
        return await self._walk(resource, depth=0)

    async def _walk(self, node, depth: int):  # type: ignore[no-untyped-def]
        if depth > 64:
            raise FhirError(400, "too-costly", "The resource is nested too deeply")
        if isinstance(node, list):
            return [await self._walk(item, depth + 1) for item in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                out[key] = await self._target(value)
            else:
                out[key] = await self._walk(value, depth + 1)
        return out

    async def _target(self, reference: str) -> str:
        if reference in self.ids:
            return self.ids[reference]
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
        r = self.resources
        if entry.query is not None or entry.resource_id is None:
            raise FhirError(
                400, "not-supported", "Searches inside a transaction are not supported; use a batch"
            )
        if entry.vid:
            version = await r.vread(entry.resource_type, entry.resource_id, entry.vid)
        else:
            version = await r.read(entry.resource_type, entry.resource_id)
        entry.response = _response("200 OK", version, self.base)
        entry.body = version.content if entry.method == "GET" else None

    def _answer(self) -> str:
        items = []
        for entry in self.entries:
            full_url = None
            if entry.resource_id and entry.method != "DELETE":
                full_url = f"{self.base}/{entry.resource_type}/{entry.resource_id}"
            items.append(
                bundle_entry(full_url=full_url, resource=entry.body, response=entry.response)
            )
        return bundle(bundle_type="transaction-response", entries=items)


async def transaction(
    session: AsyncSession, base: str, entries: list[Entry], access: Access = SYSTEM
) -> str:
    return await Transaction(session, base, entries, access).run()


async def batch(
    database: Database, base: str, entries: list[Entry], access: Access = SYSTEM
) -> str:
    """Each entry on its own: one failing entry answers its error and the others still apply."""
    items = []
    for entry in entries:
        try:
            async with database.sessions() as session:
                async with unit_of_work(session):
                    await Transaction(session, base, [entry], access).run_one(entry)
        except FhirError as error:
            entry.response = {
                "status": str(error.status),
                "outcome": outcomes.outcome(error.issues),
            }
        except (SQLAlchemyError, psycopg.Error, OSError):
            raise  # the database: errors.py answers it (503 when it is away)
        except Exception:  # noqa: BLE001 - a bug in one entry: the others' answers still count
            log.exception("batch entry %s %s failed", entry.method, entry.resource_type)
            issue = Issue("exception", "Internal server error")
            entry.response = {"status": "500", "outcome": outcomes.outcome([issue])}
        full_url = (
            f"{base}/{entry.resource_type}/{entry.resource_id}" if entry.resource_id else None
        )
        items.append(bundle_entry(full_url=full_url, resource=entry.body, response=entry.response))
    return bundle(bundle_type="batch-response", entries=items)
