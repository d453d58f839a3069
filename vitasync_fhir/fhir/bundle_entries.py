"""The entries of a batch or transaction Bundle as its JSON asks them.

`parse_entries` reads each entry's request (method, url, conditions) and resource; a transaction
with an entry it cannot read fails whole, a batch entry it cannot read answers its own error.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import orjson

from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.outcomes import FhirError, Issue
from vitasync_fhir.fhir.store import Version

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
    if_none_match: str | None = None
    if_modified_since: str | None = None
    error: FhirError | None = None  # a batch entry whose request could not be read: its answer
    existing: Version | None = None
    response: dict = field(default_factory=dict)
    body: str | None = None  # what a read or search answers
    written: Version | None = None  # the version a write leaves current (return=representation)
    note: dict | None = None  # a write's OperationOutcome (return=OperationOutcome)
    twin: Entry | None = None  # an earlier POST with the same ifNoneExist: the same resource

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def at_entry(entry_index: int, error: FhirError) -> FhirError:
    """`error` as entry `entry_index`'s: each issue names the entry."""
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


_TYPE_LEVEL = frozenset({"_history", "_search"})  # Type/_history, Type/_search: not an id


def _parse_url(url: str, base: str) -> tuple[str, str | None, str | None, str | None]:
    """(type, id, version, query) of an entry's request url."""
    if url.startswith(base):
        url = url[len(base) :]
    path, _, query = url.lstrip("/").partition("?")
    parts = [p for p in path.split("/") if p]
    if any(p.startswith("$") for p in parts):
        raise FhirError(
            400,
            "not-supported",
            f"request.url {url!r}: operations are not supported inside a batch or transaction",
        )
    if not parts:
        raise outcomes.bad_request(f"request.url {url!r} names no resource type")
    if parts[0] in ("_history", "metadata") or (len(parts) == 2 and parts[1] in _TYPE_LEVEL):
        raise FhirError(
            400,
            "not-supported",
            f"request.url {url!r}: history, metadata and _search are not supported inside a "
            "batch or transaction (a search is Type?criteria)",
        )
    resource_type = parts[0]
    resource_id = parts[1] if len(parts) > 1 else None
    vid = parts[3] if len(parts) == 4 and parts[2] == "_history" else None
    if len(parts) > 2 and vid is None:
        raise outcomes.bad_request(f"request.url {url!r} is not a supported interaction")
    return resource_type, resource_id, vid, query or None


def parse_entries(data: object, base: str, *, limit: int | None = None) -> tuple[str, list[Entry]]:
    """The Bundle's type (batch or transaction) and its entries, in the Bundle's order; 413 for
    more than `limit` entries (a batch answers each entry, so 200,000 empty ones would make as
    many error entries)."""
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
    if limit is not None and len(raw) > limit:
        raise FhirError(
            413,
            "too-costly",
            f"The Bundle holds {len(raw)} entries; at most {limit} are taken: split it",
            expression="Bundle.entry",
        )
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
            if kind == "transaction":
                raise at_entry(index, error) from None
            entries.append(_unreadable(index, at_entry(index, error)))
            continue
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
    if vid is not None and method not in ("GET", "HEAD"):
        raise outcomes.bad_request(f"a {method} entry's url names no version: {url!r}")
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
        if_none_match=request.get("ifNoneMatch"),
        if_modified_since=request.get("ifModifiedSince"),
    )


def _unreadable(index: int, error: FhirError) -> Entry:
    """A batch entry whose request could not be read: it answers `error` and does nothing."""
    return Entry(index, "", "", None, None, None, None, None, None, None, error=error)


def patch_operations(resource: dict) -> list:
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
