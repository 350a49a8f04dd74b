"""The HTML reconciliation report renders in headless Chromium, charts included.

The test screenshots the page and counts pixels of each chart colour (tests/browser.py). A
page whose SVG charts are stripped is screenshot too and must show (almost) none of those
colours, so the check can fail.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from gateway.reports.importers import ImportedFile
from gateway.reports.reconcile import ReconcileResult
from gateway.reports.render import FLAGGED, INVOICED, METERED, WITHIN, html_report
from routing.reconcile_rules import Cell, Thresholds, judge, overall_variance
from tests.browser import count_colour, screenshot

D = Decimal


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


def test_report_renders_with_charts_in_headless_chromium(tmp_path: Path) -> None:
    result = _result()
    assert [v.model for v in result.verdicts if v.flagged] == ["llama"]
    html = html_report(result)
    # Self-contained: nothing for the browser to fetch.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    rows = screenshot(html, tmp_path, "report")
    counts = {
        name: count_colour(rows, colour)
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
    bare = screenshot(stripped, tmp_path, "bare")
    # Only the two 12 × 12 legend swatches are left in those colours.
    assert count_colour(bare, METERED) <= 150 and count_colour(bare, INVOICED) <= 150
    assert count_colour(bare, FLAGGED) == 0 and count_colour(bare, WITHIN) == 0
