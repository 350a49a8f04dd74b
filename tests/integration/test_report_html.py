"""The HTML reconciliation report renders in headless Chromium, charts included.

The test screenshots the page and counts pixels of each chart colour with a small PNG decoder
(zlib + the five PNG row filters). A page whose SVG charts are stripped is screenshot too and
must show (almost) none of those colours, so the check can fail.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.reports.importers import ImportedFile
from gateway.reports.reconcile import ReconcileResult
from gateway.reports.render import FLAGGED, INVOICED, METERED, WITHIN, html_report
from routing.reconcile_rules import Cell, Thresholds, judge, overall_variance

D = Decimal
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is not installed: run scripts/ensure-services.sh")


def _result() -> ReconcileResult:
    cells = []
    for i in range(10):
        day = date(2026, 11, 2) + timedelta(days=i)
        for model, drift in (("llama", D("0.044")), ("qwen", D(0)), ("mini", D(0))):
            for tt, n in (("input_uncached", 40_000 + 3000 * i), ("output", 9_000 + 500 * i)):
                invoiced = (D(n) * (1 + drift)).to_integral_value()
                cells.append(
                    Cell(
                        "together",
                        model,
                        day,
                        tt,
                        D(n),
                        invoiced,
                        D(n) / 1_000_000,
                        invoiced / 1_000_000,
                    )
                )
    verdicts = judge(cells)
    token_var, cost_var = overall_variance(cells)
    f = ImportedFile("together", "together.csv", "generic", "0" * 32, ())
    return ReconcileResult(
        month="2026-11",
        start=datetime(2026, 11, 1, tzinfo=UTC),
        end=datetime(2026, 12, 1, tzinfo=UTC),
        thresholds=Thresholds(),
        imports=[f],
        cells=cells,
        verdicts=verdicts,
        token_variance_pct=token_var,
        cost_variance_pct=cost_var,
        metered_usd=D(1),
        invoiced_usd=D(1),
        metered_unbilled_usd=D(0),
        non_token_usd=D(0),
        unreconciled={},
        red_flags=[],
        unpriced_attempts=0,
        elapsed_s=0.1,
        run_id="rec_test",
    )


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGB(A) bytes of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + b) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[x] = (line[x] + pred) & 0xFF
        rows.append(bytes(line) if bpp == 3 else bytes(v for i, v in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def _count(rows: list[bytes], hex_colour: str) -> int:
    rgb = bytes.fromhex(hex_colour.lstrip("#"))
    return sum(1 for row in rows for i in range(0, len(row), 3) if row[i : i + 3] == rgb)


def _screenshot(html: str, tmp: Path, name: str) -> list[bytes]:
    page = tmp / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    png = tmp / f"{name}.png"
    subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={tmp / ('profile-' + name)}",
            f"--screenshot={png}",
            "--window-size=1000,1400",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    _, _, rows = _png_pixels(png.read_bytes())
    return rows


def test_report_renders_with_charts_in_headless_chromium(tmp_path: Path) -> None:
    result = _result()
    assert [v.model for v in result.verdicts if v.flagged] == ["llama"]
    html = html_report(result)
    # Self-contained: nothing for the browser to fetch.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    rows = _screenshot(html, tmp_path, "report")
    counts = {
        name: _count(rows, colour)
        for name, colour in (
            ("metered", METERED),
            ("invoiced", INVOICED),
            ("flagged", FLAGGED),
            ("within", WITHIN),
        )
    }
    # Ten days of bars each side, and one red (llama) and two green (qwen, mini) variance bars.
    assert counts["metered"] > 3000, counts
    assert counts["invoiced"] > 3000, counts
    assert counts["flagged"] > 300, counts
    assert counts["within"] > 2 * 18, counts  # two thin bars near zero (2 px minimum width)

    stripped = re.sub(r"<svg.*?</svg>", "", html, flags=re.S)
    bare = _screenshot(stripped, tmp_path, "bare")
    # Only the two 12 × 12 legend swatches are left in those colours.
    assert _count(bare, METERED) <= 150 and _count(bare, INVOICED) <= 150
    assert _count(bare, FLAGGED) == 0 and _count(bare, WITHIN) == 0
