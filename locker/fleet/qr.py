"""Rendering a pickup token as a QR code: PNG file, SVG text and terminal art (lockerctl).

Owns the QR parameters of DESIGN section 6: error correction Q, the smallest version that
fits (a 147-character ``LK1:`` token in alphanumeric mode needs version 8), a 4-module quiet
zone. Only well-formed ``LK1`` tokens are rendered, so the version bound always holds.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Final

import qrcode
import qrcode.constants
import qrcode.image.pure
import qrcode.image.svg
import qrcode.util

from locker import errors
from locker.contract.credentials import parse_token

logger = logging.getLogger(__name__)

MAX_VERSION: Final = 8
QUIET_ZONE: Final = 4
PNG_BOX_PX: Final = 8

# Glyphs for two vertically stacked modules (top, bottom) where True means "drawn".
_HALF_BLOCKS: Final = {
    (False, False): " ",
    (True, False): "\u2580",  # upper half block
    (False, True): "\u2584",  # lower half block
    (True, True): "\u2588",  # full block
}
# Black glyphs on a bright-white background, so the code reads on dark and light terminals.
_ANSI_BLACK_ON_WHITE: Final = "\x1b[30;107m"
_ANSI_RESET: Final = "\x1b[0m"


class QrError(errors.ContractError):
    """The token does not fit the QR parameters (should not happen for a valid token)."""


def build(token: str, border: int = QUIET_ZONE) -> Any:
    """The fitted ``qrcode.QRCode`` for ``token`` (ECC Q, smallest version, at most 8).

    :raises locker.contract.credentials.TokenError: ``token`` is not a well-formed LK1 token.
    """
    parse_token(token)
    qr = qrcode.QRCode(
        version=None,
        error_correction=qrcode.constants.ERROR_CORRECT_Q,
        box_size=PNG_BOX_PX,
        border=border,
    )
    # Base45 and the "LK1:" prefix are all in the QR alphanumeric set: one 5.5-bit/char segment.
    qr.add_data(qrcode.util.QRData(token.encode("ascii"), mode=qrcode.util.MODE_ALPHA_NUM))
    qr.make(fit=True)
    if qr.version > MAX_VERSION:
        raise QrError(f"QR version {qr.version} exceeds {MAX_VERSION}")
    return qr


def version(token: str) -> int:
    """The QR version ``token`` is rendered at."""
    return int(build(token).version)


def to_png(token: str, path: str | Path) -> None:
    """Write the QR code as a 1-bit greyscale PNG (pure-Python pypng, no Pillow)."""
    Path(path).write_bytes(png_bytes(token))


def png_bytes(token: str) -> bytes:
    """The QR code as PNG bytes (what :func:`to_png` writes)."""
    image = build(token).make_image(image_factory=qrcode.image.pure.PyPNGImage)
    stream = io.BytesIO()
    image.save(stream)
    return stream.getvalue()


def to_svg(token: str) -> str:
    """The QR code as a standalone SVG document (path-based, white background)."""
    image = build(token).make_image(image_factory=qrcode.image.svg.SvgPathFillImage)
    return str(image.to_string(encoding="unicode"))


def to_terminal(token: str, *, ansi: bool = True, invert: bool = False) -> str:
    """The QR code as text, two modules per character cell with half-block glyphs.

    With ``ansi`` (default) the lines force black on white, which reads on any terminal
    theme. Without it, dark modules are drawn as glyphs (light terminal) or, with ``invert``,
    light modules are (dark terminal). Lines end with a newline; the quiet zone is included.
    """
    matrix = [list(row) for row in build(token).get_matrix()]
    if len(matrix) % 2:
        matrix.append([False] * len(matrix[0]))
    drawn_is_dark = ansi or not invert
    lines = []
    for top, bottom in zip(matrix[::2], matrix[1::2], strict=True):
        cells = "".join(
            _HALF_BLOCKS[(t == drawn_is_dark, b == drawn_is_dark)]
            for t, b in zip(top, bottom, strict=True)
        )
        lines.append(f"{_ANSI_BLACK_ON_WHITE}{cells}{_ANSI_RESET}" if ansi else cells)
    return "\n".join(lines) + "\n"
