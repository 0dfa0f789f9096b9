"""QR rendering of LK1 tokens: version bound, PNG, SVG and terminal output."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest
import qrcode.constants
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from locker.contract.credentials import TokenAction, TokenError, mint_token
from locker.fleet import qr

MODULES_V8 = 49  # 17 + 4 * version
SIDE = MODULES_V8 + 2 * qr.QUIET_ZONE
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def token() -> str:
    key = Ed25519PrivateKey.generate()
    text = mint_token(key, 3, "LKR-0001", TokenAction.PICKUP, "PCL-1", 1_700_000_000, 1_800_000_000)
    assert len(text) == 147
    return text


def test_real_token_fits_version_8_at_ecc_q() -> None:
    key = Ed25519PrivateKey.generate()
    for n in range(20):
        text = mint_token(key, n, f"LKR-{n}", 1 + n % 3, f"P{n}", 0, 2**32 - 1)
        code = qr.build(text)
        assert code.error_correction == qrcode.constants.ERROR_CORRECT_Q
        assert code.version <= qr.MAX_VERSION
        assert qr.version(text) == 8  # 147 alphanumeric characters need exactly version 8 at Q


def test_malformed_token_is_not_rendered() -> None:
    with pytest.raises(TokenError):
        qr.to_svg("LK1:not a token")


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        offset += 12 + length
    return chunks


def test_png_is_written_and_valid(tmp_path: Path, token: str) -> None:
    path = tmp_path / "pickup.png"
    qr.to_png(token, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = _png_chunks(data)
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1][0] == b"IEND"
    width, height, bit_depth, colour_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert width == height == SIDE * qr.PNG_BOX_PX
    assert (bit_depth, colour_type) == (1, 0)  # 1-bit greyscale
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    row_bytes = 1 + (width + 7) // 8  # filter byte + packed bits
    assert len(pixels) == row_bytes * height
    # Quiet zone white (1), top-left finder pattern corner black (0).
    first_row = pixels[1:row_bytes]
    assert first_row == b"\xff" * (width // 8)
    finder_row = qr.QUIET_ZONE * qr.PNG_BOX_PX * row_bytes
    finder_col = qr.QUIET_ZONE * qr.PNG_BOX_PX
    byte = pixels[finder_row + 1 + finder_col // 8]
    assert pixels[finder_row] == 0  # no PNG filter, so the bits are the pixels
    assert not byte & (0x80 >> (finder_col % 8))


def test_svg_parses_as_xml(token: str) -> None:
    svg = qr.to_svg(token)
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox") is not None
    paths = root.findall("{http://www.w3.org/2000/svg}path")
    assert len(paths) == 1
    assert paths[0].get("d")


def _glyph_rows(text: str) -> list[str]:
    assert text.endswith("\n")
    return text[:-1].split("\n")


def _decode_glyphs(rows: list[str], drawn: bool) -> list[list[bool]]:
    top = {" ": False, "\u2580": True, "\u2584": False, "\u2588": True}
    bottom = {" ": False, "\u2580": False, "\u2584": True, "\u2588": True}
    matrix = []
    for row in rows:
        matrix.append([top[c] == drawn for c in row])
        matrix.append([bottom[c] == drawn for c in row])
    return matrix


def _expected_matrix(token: str) -> list[list[bool]]:
    matrix = [list(row) for row in qr.build(token).get_matrix()]
    return [*matrix, [False] * len(matrix[0])]  # padded to an even number of rows


@pytest.mark.parametrize(("ansi", "invert"), [(True, False), (False, False), (False, True)])
def test_terminal_rendering_is_the_matrix(token: str, ansi: bool, invert: bool) -> None:
    text = qr.to_terminal(token, ansi=ansi, invert=invert)
    rows = _glyph_rows(ANSI.sub("", text))
    assert len(rows) == (SIDE + 1) // 2
    assert all(len(row) == SIDE for row in rows)
    drawn = not invert
    assert _decode_glyphs(rows, drawn) == _expected_matrix(token)
    if ansi:
        assert all(line.startswith("\x1b[30;107m") for line in _glyph_rows(text))
        assert all(line.endswith("\x1b[0m") for line in _glyph_rows(text))
    else:
        assert "\x1b" not in text


def test_terminal_quiet_zone_is_blank(token: str) -> None:
    rows = _glyph_rows(qr.to_terminal(token, ansi=False))
    assert rows[0] == rows[1] == " " * SIDE
    assert all(row[: qr.QUIET_ZONE] == " " * qr.QUIET_ZONE for row in rows)
