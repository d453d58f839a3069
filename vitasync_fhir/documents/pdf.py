"""The prescription PDF: a Jinja2 HTML template rendered by WeasyPrint.

A clinic's template folder (settings.documents_templates_dir) is searched before the built-in
templates, so a clinic may replace `prescription.html` whole, or override only some of its blocks
(header, parties, prescription, footer) with `{% extends "builtin/prescription.html" %}`. The
branding (name, address, logo, colours) and the paper size come from settings; `?paper=` picks
the paper per request.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
from functools import lru_cache
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PrefixLoader, select_autoescape

from vitasync_fhir.config import Settings
from vitasync_fhir.fhir.outcomes import FhirError

BUILT_IN = Path(__file__).with_name("templates")
TEMPLATE = "prescription.html"
PAPERS = {"a4": "A4", "letter": "letter"}


def paper_of(settings: Settings, asked: str | None) -> str | None:
    """The paper for a request; None when `asked` names no paper we know."""
    if asked is None:
        return settings.paper_size
    return PAPERS.get(asked.strip().lower())


def _folders(settings: Settings) -> list[Path]:
    folders = [settings.documents_templates_dir] if settings.documents_templates_dir else []
    return [*folders, BUILT_IN]


@lru_cache(maxsize=8)
def _environment(folders: tuple[Path, ...]) -> Environment:
    # "builtin/prescription.html" stays reachable, so a clinic's template may extend it.
    builtin = PrefixLoader({"builtin": FileSystemLoader(str(BUILT_IN))})
    loader = ChoiceLoader([*(FileSystemLoader(str(f)) for f in folders), builtin])
    # auto_reload: an edited template is read again (and its new hash keys the cache).
    return Environment(loader=loader, autoescape=select_autoescape(["html"]), auto_reload=True)


def template_hash(settings: Settings) -> str:
    """A digest of every template file that can take part: an edit means a new render."""
    files = []
    for folder in _folders(settings):
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file():
                files.append(_signature(path))
    return _digest_files(tuple(files))


def _signature(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


@lru_cache(maxsize=32)
def _digest_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """Read again only when a file's name, time or size changed (the stat is the key)."""
    digest = hashlib.sha256()
    for name, _, _ in files:
        digest.update(name.encode() + b"\0" + Path(name).read_bytes())
    return digest.hexdigest()


def logo(settings: Settings) -> tuple[str | None, str]:
    """The logo as a data: URI (the PDF embeds it) and a digest of its bytes for the cache key."""
    path = settings.clinic_logo
    if path is None or not path.is_file():
        return None, ""
    return _logo(_signature(path))


@lru_cache(maxsize=8)
def _logo(signature: tuple[str, int, int]) -> tuple[str, str]:
    data = Path(signature[0]).read_bytes()
    kind = mimetypes.guess_type(signature[0])[0] or "image/png"
    return f"data:{kind};base64,{base64.b64encode(data).decode()}", hashlib.sha256(data).hexdigest()


def branding(settings: Settings) -> dict:
    return {
        "name": settings.clinic_name,
        "address": settings.clinic_address,
        "phone": settings.clinic_phone,
        "email": settings.clinic_email,
        "brand_color": settings.brand_color,
        "accent_color": settings.accent_color,
    }


def html(settings: Settings, values: dict) -> str:
    environment = _environment(tuple(_folders(settings)))
    return environment.get_template(TEMPLATE).render(**values)


def render(settings: Settings, values: dict) -> bytes:
    """The PDF bytes (CPU-bound: call it from a worker thread)."""
    try:
        from weasyprint import HTML  # imported late: Pango loads with it
    except OSError as error:  # the server runs without Pango; only printing needs it
        raise FhirError(
            503, "transient", f"PDF rendering is unavailable: {error} (install Pango)"
        ) from None
    document = HTML(string=html(settings, values), base_url=str(BUILT_IN))
    return document.write_pdf()
