"""PGR vs share of strong calls, as a PNG drawn with the standard library only (zlib, struct).

No plotting library is a dependency of the gateway, and this chart needs little: axes with
ticks and labels (a built-in 5×7 pixel font, drawn at 2×), the random router's diagonal, and
one polyline with markers per router.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)
GREY: Color = (150, 150, 150)
LIGHT: Color = (225, 225, 225)
PALETTE: tuple[Color, ...] = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))

# 5×7 glyphs: seven rows of five bits (bit 4 = leftmost), as 14 hex digits.
_FONT_HEX = {
    "0": "0E11131519110E", "1": "040C040404040E", "2": "0E11010204081F",
    "3": "1F02040201110E", "4": "02060A121F0202", "5": "1F101E0101110E",
    "6": "0608101E11110E", "7": "1F010204080808", "8": "0E11110E11110E",
    "9": "0E11110F01020C", "A": "0E11111F111111", "B": "1E11111E11111E",
    "C": "0E11101010110E", "D": "1C12111111121C", "E": "1F10101E10101F",
    "F": "1F10101E101010", "G": "0E11101711110F", "H": "1111111F111111",
    "I": "0E04040404040E", "J": "0702020202120C", "K": "11121418141211",
    "L": "1010101010101F", "M": "111B1515111111", "N": "11111915131111",
    "O": "0E11111111110E", "P": "1E11111E101010", "Q": "0E11111115120D",
    "R": "1E11111E141211", "S": "0F10100E01011E", "T": "1F040404040404",
    "U": "1111111111110E", "V": "11111111110A04", "W": "1111111515150A",
    "X": "11110A040A1111", "Y": "1111110A040404", "Z": "1F01020408101F",
    "%": "18190204081303", ".": "00000000000C0C", "-": "0000001F000000",
    "(": "02040808080402", ")": "08040202020408", ":": "000C0C000C0C00",
    "=": "00001F001F0000", ",": "000000000C0408", "/": "00010204081000",
    " ": "00000000000000",
}  # fmt: skip
_FONT = {ch: [int(code[i : i + 2], 16) for i in range(0, 14, 2)] for ch, code in _FONT_HEX.items()}
SCALE = 2  # font pixels per glyph pixel
GLYPH_W = 6 * SCALE  # 5 columns and a gap
GLYPH_H = 7 * SCALE


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    points: Sequence[tuple[float, float]]  # (strong-call share 0..1, PGR)
    color: Color = PALETTE[0]


class Canvas:
    """An RGB raster with just the drawing the chart needs."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        for y in range(max(0, y0), min(self.height, y1 + 1)):
            for x in range(max(0, x0), min(self.width, x1 + 1)):
                self.dot(x, y, color)

    def line(
        self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1, dash: int = 0
    ) -> None:
        """Bresenham, with a square brush of `width` and optional dashes of `dash` pixels."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        step = 0
        lo, hi = -(width // 2), (width - 1) // 2
        while True:
            if not dash or (step // dash) % 2 == 0:
                self.rect(x0 + lo, y0 + lo, x0 + hi, y0 + hi, color)
            if x0 == x1 and y0 == y1:
                return
            step += 1
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, vertical: bool = False) -> None:
        """Upper-case text with its top-left at (x, y); vertical reads bottom to top."""
        for n, ch in enumerate(text.upper()):
            rows = _FONT.get(ch, _FONT[" "])
            for r, bits in enumerate(rows):
                for c in range(5):
                    if bits & (16 >> c):
                        for a in range(SCALE):
                            for b in range(SCALE):
                                gx, gy = n * GLYPH_W + c * SCALE + a, r * SCALE + b
                                if vertical:
                                    self.dot(x + gy, y - gx, color)
                                else:
                                    self.dot(x + gx, y + gy, color)

    def png(self) -> bytes:
        def chunk(kind: bytes, body: bytes) -> bytes:
            return (
                struct.pack(">I", len(body))
                + kind
                + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
            )

        stride = self.width * 3
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * stride : (y + 1) * stride]) for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def _text_width(text: str) -> int:
    return len(text) * GLYPH_W


def pgr_chart(
    series: Sequence[Series], title: str = "", width: int = 640, height: int = 480
) -> bytes:
    """PNG bytes: PGR (y) against the share of strong-model calls (x, 0-100 %)."""
    canvas = Canvas(width, height)
    left, right, top, bottom = 80, width - 32, 40 if title else 20, height - 60
    pgrs = [p for s in series for _, p in s.points if p == p]  # p == p drops NaN
    y_lo = min([0.0, *pgrs])
    y_hi = max([1.0, *pgrs])
    y_lo, y_hi = _round_down(y_lo), _round_up(y_hi)

    def px(share: float) -> int:
        return round(left + share * (right - left))

    def py(pgr: float) -> int:
        return round(bottom - (pgr - y_lo) / (y_hi - y_lo) * (bottom - top))

    # Grid and ticks.
    for i in range(11):
        x = px(i / 10)
        canvas.line(x, top, x, bottom, LIGHT)
        if i % 2 == 0:
            label = f"{i * 10}%"
            canvas.text(x - _text_width(label) // 2, bottom + 8, label)
    ticks = _ticks(y_lo, y_hi)
    for value in ticks:
        y = py(value)
        canvas.line(left, y, right, y, LIGHT)
        label = f"{value:.2f}".rstrip("0").rstrip(".") if value else "0"
        canvas.text(left - 8 - _text_width(label), y - GLYPH_H // 2, label)
    canvas.line(left, top, left, bottom, BLACK)
    canvas.line(left, bottom, right, bottom, BLACK)
    canvas.line(left, py(0), right, py(0), GREY)
    # The random router: PGR equals the strong share.
    canvas.line(px(0), py(0), px(1), py(1), GREY, width=2, dash=8)
    for s in series:
        pts = [(px(x), py(y)) for x, y in sorted(s.points) if y == y]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            canvas.line(x0, y0, x1, y1, s.color, width=3)
        for x, y in pts:
            canvas.rect(x - 3, y - 3, x + 3, y + 3, s.color)
    # Legend, top-left inside the plot.
    entries = [*((s.label, s.color) for s in series), ("random", GREY)]
    for n, (label, color) in enumerate(entries):
        y = top + 10 + n * (GLYPH_H + 6)
        canvas.rect(left + 12, y + 4, left + 32, y + GLYPH_H - 4, color)
        canvas.text(left + 40, y, label)
    if title:
        canvas.text((width - _text_width(title)) // 2, 12, title)
    axis = "strong model calls"
    canvas.text((left + right - _text_width(axis)) // 2, height - 26, axis)
    canvas.text(14, (top + bottom + _text_width("PGR")) // 2, "PGR", vertical=True)
    return canvas.png()


def _round_down(value: float) -> float:
    return math.floor(value * 4) / 4


def _round_up(value: float) -> float:
    return math.ceil(value * 4) / 4


def _ticks(lo: float, hi: float) -> list[float]:
    step = 0.25 if hi - lo <= 2 else 0.5 if hi - lo <= 4 else 1.0
    start = (lo / step) // 1 * step
    values = []
    v = start
    while v <= hi + 1e-9:
        if v >= lo - 1e-9:
            values.append(round(v, 6))
        v += step
    return values
