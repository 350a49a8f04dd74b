"""The stdlib PNG chart of a router's PGR curve: a valid PNG of the asked size."""

from __future__ import annotations

import struct
import zlib

from gateway.router.plot import PALETTE, Canvas, Series, pgr_chart


def chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        body = png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, kind
        out.append((kind, body))
        pos += 12 + length
    return out


def pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG with filter 0 on every row."""
    parts = chunks(png)
    assert parts[0][0] == b"IHDR" and parts[-1][0] == b"IEND"
    width, height, depth, color, _, _, _ = struct.unpack(">IIBBBBB", parts[0][1])
    assert (depth, color) == (8, 2)
    raw = zlib.decompress(b"".join(body for kind, body in parts if kind == b"IDAT"))
    stride = 1 + width * 3
    assert len(raw) == height * stride
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows)
    return width, height, [row[1:] for row in rows]


def curve() -> Series:
    return Series("router", [(i / 10, min(1.0, (i / 10) ** 0.5)) for i in range(11)])


def test_chart_is_a_png_of_the_default_size() -> None:
    width, height, rows = pixels(pgr_chart([curve()], "APGR 0.61"))
    assert (width, height) == (640, 480)
    colors = {row[x : x + 3] for row in rows for x in range(0, len(row), 3)}
    assert bytes(PALETTE[0]) in colors  # the curve
    assert b"\x00\x00\x00" in colors  # axes and text
    assert b"\xff\xff\xff" in colors  # background


def test_chart_size_and_out_of_range_pgr() -> None:
    series = Series("odd", [(0.0, 0.0), (0.5, -0.4), (1.0, 1.6), (0.7, float("nan"))])
    width, height, _ = pixels(pgr_chart([series], width=320, height=240))
    assert (width, height) == (320, 240)


def test_canvas_line_reaches_both_ends() -> None:
    canvas = Canvas(10, 10)
    canvas.line(0, 0, 9, 9, (1, 2, 3))
    _, _, rows = pixels(canvas.png())
    assert rows[0][0:3] == b"\x01\x02\x03"
    assert rows[9][27:30] == b"\x01\x02\x03"
