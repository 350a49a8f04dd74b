"""Variance classification and the causes the reconciliation can test from the data."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from routing.reconcile_rules import (
    CACHE_BILLED_NOT_METERED,
    CACHE_METERED_NOT_BILLED,
    DAYS_MISSING_IN_LEDGER,
    DAYS_MISSING_ON_INVOICE,
    PRICE_TABLE_MISMATCH,
    PROVIDER_WIDE_EXCESS,
    TOKENIZER_DRIFT,
    UNMETERED_RETRIES,
    Cell,
    Counts,
    Thresholds,
    judge,
    overall_variance,
    variance_pct,
    within,
)

D = Decimal
DAYS = [date(2026, 11, 3) + timedelta(days=7 * i) for i in range(3)]
RATES = {"input_uncached": D(1), "input_cached": D("0.1"), "output": D(2)}


def cells(
    model: str,
    *,
    provider: str = "p",
    drift: Decimal | None = None,
    cached: int = 2000,
    metered_cached: int | None = None,
    invoice_rate: Decimal | None = None,
    days: list[date] = DAYS,
    invoice_days: list[date] = DAYS,
) -> list[Cell]:
    drift = drift or D(0)
    invoice_rate = invoice_rate or D(1)
    out = []
    for day in sorted(set(days) | set(invoice_days)):
        for tt, n in (("input_uncached", 10_000), ("input_cached", cached), ("output", 3000)):
            m = n if tt != "input_cached" or metered_cached is None else metered_cached
            m = m if day in days else 0
            i = (D(n) * (1 + drift)).to_integral_value() if day in invoice_days else None
            out.append(
                Cell(
                    provider,
                    model,
                    day,
                    tt,
                    D(m),
                    i,
                    D(m) * RATES[tt] / 1_000_000,
                    None if i is None else i * RATES[tt] * invoice_rate / 1_000_000,
                )
            )
    return out


def test_variance_definition() -> None:
    assert variance_pct(D(100), D(104)) == D(4)
    assert variance_pct(D(0), D(0)) == 0
    assert variance_pct(D(0), D(5)) is None  # billed, never metered: a cause, not a number
    assert variance_pct(D(5), None) is None


def test_exact_match_is_within() -> None:
    verdicts = judge(cells("a") + cells("b"))
    assert within(verdicts)
    assert overall_variance(cells("a")) == (D(0), D(0))


def test_drift_on_one_model_is_tokenizer_drift_on_that_model_only() -> None:
    verdicts = judge(cells("a") + cells("b", drift=D("0.044")) + cells("c"))
    flagged = [v for v in verdicts if v.flagged]
    assert [v.model for v in flagged] == ["b"]
    assert flagged[0].token_flag and not flagged[0].cost_flag  # +4.4 % $ is under 10 %
    assert [c.code for c in flagged[0].causes] == [TOKENIZER_DRIFT]
    assert round(flagged[0].token_variance_pct or 0, 1) == D("4.4")


def test_same_excess_on_every_model_is_provider_wide() -> None:
    verdicts = judge(cells("a", drift=D("0.05")) + cells("b", drift=D("0.05")))
    assert all([c.code for c in v.causes] == [PROVIDER_WIDE_EXCESS] for v in verdicts)


def test_cache_billed_not_metered_and_the_reverse() -> None:
    (v,) = judge(cells("a", metered_cached=0))
    assert v.flagged and [c.code for c in v.causes] == [CACHE_BILLED_NOT_METERED]
    (v,) = judge(cells("a", cached=0, metered_cached=2000))
    assert [c.code for c in v.causes] == [CACHE_METERED_NOT_BILLED]


def test_missing_days_on_either_side() -> None:
    (v,) = judge(cells("a", invoice_days=DAYS[:2]))
    assert [c.code for c in v.causes] == [DAYS_MISSING_ON_INVOICE]
    assert DAYS[2].isoformat() in v.causes[0].message
    (v,) = judge(cells("a", days=DAYS[1:]))
    assert [c.code for c in v.causes] == [DAYS_MISSING_IN_LEDGER]


def test_price_table_mismatch_when_tokens_agree_but_dollars_do_not() -> None:
    (v,) = judge(cells("a", invoice_rate=D("1.25")))
    assert not v.token_flag and v.cost_flag
    assert [c.code for c in v.causes] == [PRICE_TABLE_MISMATCH]
    assert "$1.0000/M metered vs $1.2500/M invoiced" in v.causes[0].message


def test_unmetered_retries_from_request_counts() -> None:
    counts = {("p", "a"): Counts(ledger_attempts=1000, invoiced_requests=1080)}
    (v,) = judge(cells("a", drift=D("0.08")), counts)
    assert UNMETERED_RETRIES in [c.code for c in v.causes]
    assert "1,080 requests" in v.causes[-1].message or any("1,080" in c.message for c in v.causes)


def test_thresholds_are_configurable() -> None:
    drifted = cells("a", drift=D("0.02"))
    assert within(judge(drifted))
    assert not within(judge(drifted, thresholds=Thresholds(token_pct=D(1))))
