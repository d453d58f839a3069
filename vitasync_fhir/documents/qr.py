"""QR code images (PNG or SVG) of a text, with the `qrcode` library."""

from __future__ import annotations

import io
import re

import qrcode
import qrcode.image.svg
from qrcode.constants import ERROR_CORRECT_M

BORDER = 4  # modules of quiet zone, as ISO/IEC 18004 asks
MIN_SIZE, MAX_SIZE, DEFAULT_SIZE = 64, 2048, 300
_SIZE = re.compile(r'width="[\d.]+mm" height="[\d.]+mm"')
FORMATS = {"png": "image/png", "svg": "image/svg+xml"}


def _code(text: str) -> qrcode.QRCode:
    # M recovers from 15% damage: enough for a creased or smudged printout, still compact.
    code = qrcode.QRCode(error_correction=ERROR_CORRECT_M, border=BORDER)
    code.add_data(text)
    code.make(fit=True)
    return code


def png(text: str, *, size: int = DEFAULT_SIZE) -> bytes:
    """A square PNG about `size` pixels wide: whole pixels per module, so it stays crisp."""
    code = _code(text)
    modules = code.modules_count + 2 * BORDER
    code.box_size = max(1, size // modules)
    buffer = io.BytesIO()
    code.make_image().save(buffer, format="PNG")
    return buffer.getvalue()


def svg(text: str, *, size: int = DEFAULT_SIZE) -> bytes:
    """A square SVG drawn `size` pixels wide (it scales without loss)."""
    code = _code(text)
    image = code.make_image(image_factory=qrcode.image.svg.SvgPathImage)
    data = image.to_string(encoding="unicode")
    data = _SIZE.sub(f'width="{size}" height="{size}"', data, count=1)
    return data.encode()


def image(text: str, *, fmt: str = "png", size: int = DEFAULT_SIZE) -> bytes:
    return svg(text, size=size) if fmt == "svg" else png(text, size=size)
