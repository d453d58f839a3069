"""Content negotiation and the assembly of response bodies from stored JSON text.

Stored resources are already the exact JSON we serve, so Bundles are assembled as text around
them instead of being parsed and serialized again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping

import orjson
from fastapi import Request
from fastapi.responses import Response

from vitasync_fhir.fhir.outcomes import FhirError

FHIR_JSON = "application/fhir+json"
JSON_TYPES = {"application/fhir+json", "application/json", "json", "fhir+json"}
_ACCEPTABLE = JSON_TYPES | {"*/*", "application/*", ""}
_FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": "application/json"}


def _media_types(header: str) -> list[str]:
    types = []
    for part in header.split(","):
        media, _, params = part.strip().partition(";")
        if "q=0" in params.replace(" ", "") and "q=0." not in params.replace(" ", ""):
            continue
        types.append(media.strip().lower())
    return types


def response_media_type(request: Request) -> str:
    """The JSON flavour to answer with; 406 when the client accepts no JSON at all."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        media = fmt.split(";")[0].strip().lower()
        if media not in JSON_TYPES:
            raise FhirError(406, "not-supported", f"_format {fmt!r} is not supported; use json")
        return _FORMAT_ALIASES.get(media, FHIR_JSON)
    accept = request.headers.get("accept", "")
    types = _media_types(accept) if accept else [""]
    if not any(t in _ACCEPTABLE for t in types):
        raise FhirError(
            406, "not-supported", f"Cannot answer in {accept!r}; this server speaks JSON"
        )
    if "application/json" in types and FHIR_JSON not in types:
        return "application/json"
    return FHIR_JSON


def wants_native(request: Request, content_type: object) -> bool:
    """Whether a read of a Binary should answer its content as is (R4 binary.html: a read that
    does not ask for a FHIR format gets the native content): the client names the Binary's own
    media type (or its family, `image/*`) and no JSON. `*/*` or no Accept gets the resource."""
    if request.query_params.get("_format") is not None or not isinstance(content_type, str):
        return False
    accept = request.headers.get("accept", "")
    types = _media_types(accept) if accept else []
    if not types or any(t in _ACCEPTABLE for t in types):
        return False
    own = content_type.split(";")[0].strip().lower()
    return any(t == own or (t.endswith("/*") and own.startswith(t[:-1])) for t in types)


def native_response(resource: dict, headers: Mapping[str, str]) -> Response:
    """A Binary's content with its own Content-Type. Sandboxed and never sniffed: content a
    client uploaded must not run as a page of this server's origin."""
    data = resource.get("data")
    content = base64.b64decode(data) if isinstance(data, str) else b""
    safe = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    return Response(content, media_type=resource["contentType"], headers={**headers, **safe})


def require_json_body(
    request: Request, *, allowed: Iterable[str] = ("application/fhir+json", "application/json")
) -> None:
    """415 unless the request body is declared as one of `allowed`."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in allowed:
        shown = content_type or "none"
        raise FhirError(
            415,
            "not-supported",
            f"Content-Type {shown} is not supported; send {', '.join(allowed)}",
        )


def wants_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "").lower() == "true"


def fhir_response(
    request: Request,
    body: str | bytes | None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Answer stored JSON text as it is (pretty-printed only on request)."""
    media = response_media_type(request)
    if body is not None and wants_pretty(request):
        body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    return Response(
        content=body if body is not None else b"",
        status_code=status,
        media_type=f"{media}; charset=utf-8" if body is not None else None,
        headers=dict(headers or {}),
    )


def dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def bundle_entry(
    *,
    full_url: str | None = None,
    resource: str | None = None,
    search_mode: str | None = None,
    request: Mapping | None = None,
    response: Mapping | None = None,
    extra: Mapping | None = None,
) -> str:
    """One Bundle.entry as JSON text, with `resource` spliced in unparsed."""
    parts = []
    if full_url is not None:
        parts.append('"fullUrl":' + dumps(full_url))
    if resource is not None:
        parts.append('"resource":' + resource)
    if search_mode is not None:
        parts.append('"search":' + dumps({"mode": search_mode, **(extra or {})}))
    if request is not None:
        parts.append('"request":' + dumps(request))
    if response is not None:
        parts.append('"response":' + dumps(response))
    return "{" + ",".join(parts) + "}"


def bundle(
    *,
    bundle_type: str,
    entries: Iterable[str],
    total: int | None = None,
    links: Iterable[tuple[str, str]] = (),
    head: Mapping | None = None,
) -> str:
    """A Bundle as JSON text around already-serialized entries."""
    fields = {"resourceType": "Bundle", **(head or {}), "type": bundle_type}
    if total is not None:
        fields["total"] = total
    link_list = [{"relation": rel, "url": url} for rel, url in links]
    if link_list:
        fields["link"] = link_list
    text = dumps(fields)
    entry_text = ",".join(entries)
    if not entry_text:
        return text
    return text[:-1] + ',"entry":[' + entry_text + "]}"
