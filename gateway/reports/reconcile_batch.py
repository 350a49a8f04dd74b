"""Batch line items in reconciliation: which ledger attempts the provider bills as batch, the
batch side's own rows, and the `batch_price_not_applied` cause.

The provider bills a line at its batch price only when it ran through the provider's own
batch API: an attempt with role `batch` whose request belongs to a batch with
`batches.path = 'provider_batch'`. Those attempts are compared with the invoice's batch line
items (token types with the `batch_` prefix) under the model name `<model> (batch)`, so they
get their own cells, verdict and variance; everything else (live traffic, and batch lines run
on serverless deployments at the live price) is compared with the live line items. Dedicated
GPU batch fill is billed by the hour like the rest of the GPU's traffic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal

from gateway.reports.store import LedgerDay, ReportStore
from routing.reconcile_rules import PRICE_TABLE_MISMATCH, Cause, Cell, ModelVerdict

BATCH_ROLE = "batch"
PROVIDER_BATCH = "provider_batch"
BATCH_MODEL_SUFFIX = " (batch)"
BATCH_VERSION_MARK = "+batch"
# Cause code, beside routing.reconcile_rules' codes (stable for the CSV and for tests).
BATCH_PRICE_NOT_APPLIED = "batch_price_not_applied"

_ZERO = Decimal(0)
# A day's batch dollars "match the live price" when the share of its tokens billed at the live
# rate is at least 1 − this; above _PARTIAL (and beyond the day's rounding) it is a partial one.
_MATCH = Decimal("0.02")
_PARTIAL = Decimal("0.05")
_KeyDay = tuple[str, str, date, str]


def batch_model(model: str) -> str:
    """The name a model's provider-batch cells and verdict carry."""
    return model + BATCH_MODEL_SUFFIX


def is_batch_model(model: str) -> bool:
    return model.endswith(BATCH_MODEL_SUFFIX)


async def provider_batch_days(
    store: ReportStore, start: datetime, end: datetime
) -> list[LedgerDay]:
    """Attempts billed through a provider's batch API, per deployment and UTC day (the same
    grouping and sums as ReportStore.ledger_days, of which they are a subset)."""
    return await store.ledger_days(start, end, provider_batch=True)


def split_ledger(
    ledger: Sequence[LedgerDay], batch: Sequence[LedgerDay]
) -> tuple[list[LedgerDay], list[LedgerDay]]:
    """(live rows, provider-batch rows): each ledger row less its provider-batch part."""

    def key(d: LedgerDay) -> tuple[str, str, str, date]:
        return (d.provider, d.deployment, d.upstream_model, d.day)

    billed = {key(d): d for d in batch}
    live = []
    for d in ledger:
        part = billed.get(key(d))
        if part is None:
            live.append(d)
            continue
        rest = replace(
            d,
            attempts=d.attempts - part.attempts,
            failed=d.failed - part.failed,
            input_uncached=d.input_uncached - part.input_uncached,
            cached_read=d.cached_read - part.cached_read,
            cache_write=d.cache_write - part.cache_write,
            output=d.output - part.output,
            cost_usd=d.cost_usd - part.cost_usd,
            unpriced=d.unpriced - part.unpriced,
        )
        if rest.attempts > 0:
            live.append(rest)
    return live, list(batch)


def split_versions(
    versions: Sequence[tuple[str, str, list[str]]],
) -> list[tuple[str, str, list[str]]]:
    """Price versions per deployment with batch rates apart, so a deployment charged at its
    live and its batch rate in one month is not read as a price change."""
    out = []
    for provider, deployment, vs in versions:
        live = [v for v in vs if BATCH_VERSION_MARK not in v]
        batch = [v for v in vs if BATCH_VERSION_MARK in v]
        if live:
            out.append((provider, deployment, live))
        if batch:
            out.append((provider, batch_model(deployment), batch))
    return out


def batch_price_causes(
    verdicts: Sequence[ModelVerdict], cells: Sequence[Cell], live_usd: Mapping[_KeyDay, Decimal]
) -> None:
    """Add `batch_price_not_applied` to each batch verdict whose invoiced dollars, on some
    day, are what its tokens cost at the LIVE price rather than the batch rate.

    Per day, with B the batch-rate dollars and L the live-rate dollars of the day's batch
    tokens (the invoice's counts where it has them, else the ledger's), the share billed at
    the live rate is (invoiced − B) / (L − B). It replaces `price_table_mismatch` on that
    verdict: the table is right, the provider did not apply its batch discount.
    """
    by_day: dict[tuple[str, str, date], list[Decimal]] = defaultdict(lambda: [_ZERO] * 3)
    for c in cells:
        if not is_batch_model(c.model) or c.invoiced_usd is None or c.metered_usd is None:
            continue
        live = live_usd.get((c.provider, c.model, c.day, c.token_type))
        if live is None or c.metered_tokens <= 0:
            continue
        tokens = c.invoiced_tokens if c.invoiced_tokens is not None else c.metered_tokens
        acc = by_day[(c.provider, c.model, c.day)]
        acc[0] += tokens * c.metered_usd / c.metered_tokens
        acc[1] += tokens * live / c.metered_tokens
        acc[2] += c.invoiced_usd
    found: dict[tuple[str, str], list[tuple[date, Decimal, list[Decimal]]]] = defaultdict(list)
    for (provider, model, day), (at_batch, at_live, invoiced) in sorted(by_day.items()):
        gap = at_live - at_batch
        if gap <= at_batch * Decimal("0.001") or gap <= 0:
            continue  # no discount to miss
        share = (invoiced - at_batch) / gap
        if share >= _PARTIAL:
            found[(provider, model)].append((day, share, [at_batch, at_live, invoiced]))
    for v in verdicts:
        days = found.get((v.provider, v.model))
        if not days:
            continue
        v.causes = [c for c in v.causes if c.code != PRICE_TABLE_MISMATCH]
        v.causes.append(Cause(BATCH_PRICE_NOT_APPLIED, _message(v.model, days)))


def _message(model: str, days: list[tuple[date, Decimal, list[Decimal]]]) -> str:
    whole = [d for d in days if d[1] >= 1 - _MATCH]
    part = [d for d in days if d[1] < 1 - _MATCH]
    at_batch = sum((d[2][0] for d in days), _ZERO)
    at_live = sum((d[2][1] for d in days), _ZERO)
    invoiced = sum((d[2][2] for d in days), _ZERO)
    bits = []
    if whole:
        bits.append("billed at the live price on " + _days([d[0] for d in whole]))
    if part:
        shares = ", ".join(f"{d[0].isoformat()} ~{d[1] * 100:.0f} %" for d in part[:6])
        bits.append(f"partly billed at the live price ({shares} of the tokens)")
    name = model.removesuffix(BATCH_MODEL_SUFFIX)
    return (
        f"{name} batch line items {' and '.join(bits)}: invoiced {_usd(invoiced)} where the "
        f"batch rate gives {_usd(at_batch)} (the live rate {_usd(at_live)}); the provider did "
        "not apply its batch discount (ask for a credit) or the batch ran on a live endpoint"
    )


def _usd(value: Decimal) -> str:
    # Cents hide a small month's figures: below a cent, 8 places.
    return f"${value:,.4f}" if abs(value) >= Decimal("0.01") else f"${value:.8f}"


def _days(days: list[date]) -> str:
    shown = ", ".join(d.isoformat() for d in days[:6])
    return shown + (f" and {len(days) - 6} more" if len(days) > 6 else "")
