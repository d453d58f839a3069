"""The rules of documents: which resources a print reads, the cache, QR codes for any resource.

Nothing here knows about HTTP. Every read goes through `Resources(session, access)`, so the role
policy and the audit apply before the cache is even looked at: a cached PDF is only ever handed to
a caller who has just been allowed to read every resource in it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from vitasync_fhir.auth import policy
from vitasync_fhir.config import Settings
from vitasync_fhir.documents import links, pdf, prescription, qr
from vitasync_fhir.documents.cache import RenderCache, key
from vitasync_fhir.fhir import outcomes
from vitasync_fhir.fhir.models import resource_types
from vitasync_fhir.fhir.outcomes import FhirError
from vitasync_fhir.fhir.service import Resources, check_id


@dataclass(frozen=True, slots=True)
class Document:
    data: bytes
    filename: str
    cached: bool


@dataclass(frozen=True, slots=True)
class Code:
    data: bytes
    media_type: str
    filename: str
    url: str


def _caches(state: object, settings: Settings) -> RenderCache:
    found = getattr(state, "documents_cache", None)
    if found is None:
        found = RenderCache(settings.document_cache_bytes)
        state.documents_cache = found  # type: ignore[attr-defined]
    return found


async def prescription_pdf(
    resources: Resources, settings: Settings, state: object, resource_id: str, *, paper: str | None
) -> Document:
    """The prescription as a PDF, from the cache when nothing it shows has changed."""
    page = pdf.paper_of(settings, paper)
    if page is None:
        raise outcomes.bad_request(f"paper must be A4 or letter, not {paper!r}", expression="paper")
    sources = await prescription.gather(resources, resource_id)
    link = links.make(settings, "MedicationRequest", resource_id)
    logo, logo_hash = pdf.logo(settings)
    options = {"paper": page, "brand": pdf.branding(settings), "logo": logo_hash}
    name = key(
        versions=sources.versions,
        template=pdf.template_hash(settings),
        options={**options, "link": link.token},
    )
    values = prescription.context(sources)
    filename = _filename(values)
    cache = _caches(state, settings)
    found = cache.get(name)
    if found is not None:
        return Document(found, filename, cached=True)
    values.update(
        clinic=options["brand"],
        logo=logo,
        paper=page,
        # One pixel per module, drawn unsmoothed (image-rendering: pixelated): as sharp as a
        # vector code on paper, and WeasyPrint lays out an SVG of a QR code far more slowly.
        qr=_data_uri(qr.png(links.url(settings, link), size=1)),
        link_expires=_day(link.expires),
    )
    data = await state.renderer.render(settings, values)  # type: ignore[attr-defined]
    cache.put(name, data)
    return Document(data, filename, cached=False)


async def qr_code(
    resources: Resources, settings: Settings, resource_id: str, *, fmt: str, size: int
) -> Code:
    """A QR code of the verification link of the resource with this id, whatever its type."""
    if fmt not in qr.FORMATS:
        raise outcomes.bad_request("format must be png or svg", expression="format")
    if not qr.MIN_SIZE <= size <= qr.MAX_SIZE:
        raise outcomes.bad_request(
            f"size must be between {qr.MIN_SIZE} and {qr.MAX_SIZE}", expression="size"
        )
    check_id(resource_id)
    resource_type = await _type_of(resources, resource_id)
    try:
        await resources.read(resource_type, resource_id, action="$qr")
    except FhirError as error:  # hidden or gone: as unknown as an id never used
        if error.status in (404, 410):
            raise outcomes.not_found(_UNKNOWN.format(resource_id)) from None
        raise
    link = links.make(settings, resource_type, resource_id)
    url = links.url(settings, link)
    data = await asyncio.to_thread(qr.image, url, fmt=fmt, size=size)
    filename = f"qr-{resource_type.lower()}-{resource_id[:8]}.{fmt}"
    return Code(data, qr.FORMATS[fmt], filename, url)


_UNKNOWN = "No resource you may read has the id {}"


async def _type_of(resources: Resources, resource_id: str) -> str:
    """The type of the one current resource with this id that the caller may read (when none
    is, a type whose read then refuses it, so that the refusal is audited)."""
    access = resources.access
    caller = access.caller
    types = [
        t for t in sorted(resource_types()) if caller is None or policy.allowed(caller, t, "read")
    ]
    found = await resources.store.types_with_id(resource_id, types)
    if not found:
        raise outcomes.not_found(_UNKNOWN.format(resource_id))
    currents = [await resources.store.current(t, resource_id) for t in found]
    visible = [
        v.resource_type
        for v in currents
        if v is not None and access.may_see(v.resource_type, v.content, "read")
    ]
    if len(visible) > 1:  # ids are unique per type only; uuids never collide in practice
        raise FhirError(
            409, "multiple-matches", f"Several resources have the id {resource_id}: {visible}"
        )
    return visible[0] if visible else found[0]


def _filename(values: dict) -> str:
    family = _slug(values["patient"].get("family") or "patient")
    parts = [
        "prescription",
        family,
        values["rx"]["day"] or "undated",
        _slug(values["rx"]["number"]),
    ]
    return "-".join(p for p in parts if p) + ".pdf"


def _slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")[:40] or "patient"


def _day(epoch: int) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return f"{moment.day} {moment:%b %Y}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
