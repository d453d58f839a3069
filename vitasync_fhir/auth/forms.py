"""The one check every HTML form post of the server makes: that it came from our own pages.

Browsers name the page a form was posted from in `Origin` (or at least `Referer`). A post naming
another origin is refused, so a page elsewhere cannot sign someone in as its author (login CSRF),
ask for reset e-mails or answer a consent in their name. A post naming none comes from a program,
not a browser page, and has no victim's cookies or session to borrow.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse


def _origin(url: str | None) -> str | None:
    if not url:
        return None
    if url == "null":  # sandboxed frames and some redirects: an origin that is nobody's
        return "null"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else "null"


def from_elsewhere(request: Request) -> bool:
    """Whether the post names an origin other than the server's public address (base_url)."""
    sent = _origin(request.headers.get("origin")) or _origin(request.headers.get("referer"))
    return sent is not None and sent != _origin(request.app.state.settings.base_url)


def refusal() -> HTMLResponse:
    from vitasync_fhir.auth.oauth_routes import page  # the pages' own look and headers

    message = "This form was sent from another site. Open the page here and send it again."
    return page("error.html", 403, message=message)
