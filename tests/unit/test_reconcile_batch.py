"""Batch line items in reconciliation, below SQL: the ledger split into live and
provider-batch rows, the cells and verdicts each side gets, `batch_price_not_applied` (whole
days and partial ones) and price versions with batch rates apart."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from gateway.config.loading import parse_config
from gateway.ledger.pricing import PriceBook, parse_prices
from gateway.reports.reconcile import build_cells
from gateway.reports.reconcile_batch import (
    BATCH_PRICE_NOT_APPLIED,
    batch_price_causes,
    split_ledger,
    split_versions,
)
from gateway.reports.store import InvoiceDay, LedgerDay
from routing.reconcile_rules import PRICE_TABLE_MISMATCH, Cell, judge

D = Decimal
START, END = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
DAY1, DAY2 = date(2026, 11, 3), date(2026, 11, 4)
CONFIG = parse_config(
    """
auth: none
providers:
  oa: {kind: closed_api, api_base: "http://127.0.0.1:9/v1", batch_discount: 0.5}
deployments:
  m@oa: {provider: oa, model: "m::tokens=5"}
routes:
  m: {targets: [m@oa]}
""",
    "gw.yaml",
    {},
)
BOOK = PriceBook.from_config(
    CONFIG, parse_prices("models: {m: [{effective_from: 2026-01-01, input: 2, output: 8}]}", "p")
)


def _day(day: date, attempts: int, tin: int, tout: int) -> LedgerDay:
    return LedgerDay(
        provider="oa",
        provider_kind="closed_api",
        deployment="m@oa",
        upstream_model="m::tokens=5",
        day=day,
        attempts=attempts,
        failed=0,
        input_uncached=tin,
        cached_read=0,
        cache_write=0,
        output=tout,
        cost_usd=D(0),
        unpriced=0,
    )


def _invoice(day: date, token_type: str, tokens: int, usd: str) -> InvoiceDay:
    return InvoiceDay("oa", "m", day, token_type, D(tokens), D(usd), None)


def test_split_ledger_takes_the_provider_batch_part_out_of_each_row() -> None:
    ledger = [_day(DAY1, 10, 1000, 500), _day(DAY2, 4, 400, 100)]
    batch = [_day(DAY1, 6, 600, 300), _day(DAY2, 4, 400, 100)]
    live, billed = split_ledger(ledger, batch)
    assert [(d.day, d.attempts, d.input_uncached, d.output) for d in live] == [
        (DAY1, 4, 400, 200)  # DAY2 was all batch: no live row left
    ]
    assert billed == batch


LiveUsd = dict[tuple[str, str, date, str], Decimal]


def _cells(invoice: list[InvoiceDay]) -> tuple[list[Cell], LiveUsd]:
    live_usd: LiveUsd = {}
    live, batch = split_ledger(
        [_day(DAY1, 10, 1_000_000, 500_000), _day(DAY2, 5, 1_000_000, 0)],
        [_day(DAY1, 6, 600_000, 300_000), _day(DAY2, 5, 1_000_000, 0)],
    )
    cells, _, _ = build_cells(live, invoice, {"oa"}, BOOK, CONFIG, START, END, batch, live_usd)
    return cells, live_usd


def test_batch_lines_get_their_own_cells_at_the_batch_rate() -> None:
    invoice = [
        _invoice(DAY1, "input_uncached", 400_000, "0.8"),
        _invoice(DAY1, "output", 200_000, "1.6"),
        _invoice(DAY1, "batch_input_uncached", 600_000, "0.6"),
        _invoice(DAY1, "batch_output", 300_000, "1.2"),
        _invoice(DAY2, "batch_input_uncached", 1_000_000, "1"),
    ]
    cells, live_usd = _cells(invoice)
    got = {(c.model, c.day, c.token_type): (c.metered_tokens, c.metered_usd) for c in cells}
    assert got[("m", DAY1, "input_uncached")] == (D(400_000), D("0.8"))
    assert got[("m (batch)", DAY1, "input_uncached")] == (D(600_000), D("0.6"))
    assert got[("m (batch)", DAY1, "output")] == (D(300_000), D("1.2"))
    assert live_usd[("oa", "m (batch)", DAY1, "output")] == D("2.4")  # the live rate
    verdicts = judge(cells)
    batch_price_causes(verdicts, cells, live_usd)
    assert {v.model: v.flagged for v in verdicts} == {"m": False, "m (batch)": False}


def test_a_day_billed_at_the_live_price_is_named() -> None:
    invoice = [
        _invoice(DAY1, "input_uncached", 400_000, "0.8"),
        _invoice(DAY1, "output", 200_000, "1.6"),
        _invoice(DAY1, "batch_input_uncached", 600_000, "0.6"),
        _invoice(DAY1, "batch_output", 300_000, "1.2"),
        # DAY2's batch at $2/M, the live rate, instead of $1/M.
        _invoice(DAY2, "batch_input_uncached", 1_000_000, "2"),
    ]
    cells, live_usd = _cells(invoice)
    verdicts = judge(cells)
    batch = next(v for v in verdicts if v.model == "m (batch)")
    assert PRICE_TABLE_MISMATCH in [c.code for c in batch.causes]  # before: a wrong table?
    batch_price_causes(verdicts, cells, live_usd)
    assert [c.code for c in batch.causes] == [BATCH_PRICE_NOT_APPLIED]
    message = batch.causes[0].message
    assert "billed at the live price on 2026-11-04" in message and "2026-11-03" not in message
    # The figures are those of the days named.
    assert "invoiced $2.0000 where the batch rate gives $1.0000 (the live rate $2.0000)" in message
    live = next(v for v in verdicts if v.model == "m")
    assert not live.flagged


def test_a_day_partly_billed_live_gives_the_share() -> None:
    invoice = [
        _invoice(DAY1, "batch_input_uncached", 600_000, "0.6"),
        _invoice(DAY1, "batch_output", 300_000, "1.2"),
        # 30 % of DAY2's batch tokens at the live rate: 0.7 × $1 + 0.3 × $2.
        _invoice(DAY2, "batch_input_uncached", 1_000_000, "1.3"),
    ]
    cells, live_usd = _cells(invoice)
    verdicts = judge(cells)
    batch_price_causes(verdicts, cells, live_usd)
    batch = next(v for v in verdicts if v.model == "m (batch)")
    assert [c.code for c in batch.causes] == [BATCH_PRICE_NOT_APPLIED]
    assert "partly billed at the live price (2026-11-04 ~30 %" in batch.causes[0].message


def test_small_rounding_is_not_a_missed_discount() -> None:
    invoice = [
        _invoice(DAY1, "batch_input_uncached", 600_000, "0.6001"),
        _invoice(DAY1, "batch_output", 300_000, "1.2"),
        _invoice(DAY2, "batch_input_uncached", 1_000_000, "1.01"),  # 1 %: under the 5 % share
    ]
    cells, live_usd = _cells(invoice)
    verdicts = judge(cells)
    batch_price_causes(verdicts, cells, live_usd)
    assert not any(c.code == BATCH_PRICE_NOT_APPLIED for v in verdicts for c in v.causes)


def test_price_versions_with_batch_rates_apart() -> None:
    versions = [
        ("oa", "m@oa", ["prices.yaml:m:2026-01-01", "prices.yaml:m:2026-01-01+batch-50%"]),
        ("oa", "n@oa", ["a", "b"]),
    ]
    assert split_versions(versions) == [
        ("oa", "m@oa", ["prices.yaml:m:2026-01-01"]),
        ("oa", "m@oa (batch)", ["prices.yaml:m:2026-01-01+batch-50%"]),
        ("oa", "n@oa", ["a", "b"]),
    ]
