"""`farebox reconcile`: the ledger against provider invoices for one month.

Flow: parse every invoice file (nothing is stored if any is bad) → store them in one
transaction → aggregate both sides in SQL per provider × model × UTC day → price the metered
tokens per token type with the same dated price book the gateway charged with → hand the cells
to the pure rules (routing.reconcile_rules) → store the run.

Batch line items (token types `batch_…`) are compared with the attempts billed through the
provider's batch API, at its batch rate, as the model `<model> (batch)`; see
gateway/reports/reconcile_batch.py.
"""

from __future__ import annotations

import calendar
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from gateway.config.schema import GatewayConfig
from gateway.ledger.pricing import PriceBook
from gateway.reports.consensus import consensus_lines
from gateway.reports.importers import ImportedFile
from gateway.reports.invoice_lines import split_batch
from gateway.reports.reconcile_batch import (
    batch_model,
    batch_price_causes,
    provider_batch_days,
    split_ledger,
    split_versions,
)
from gateway.reports.reconcile_result import ReconcileResult as ReconcileResult
from gateway.reports.reconcile_result import run_row
from gateway.reports.reconcile_result import verdict_dict as verdict_dict
from gateway.reports.store import InvoiceDay, LedgerDay, ReportStore
from routing.cost import MILLION
from routing.reconcile_rules import (
    CACHE_WRITE,
    GPU_HOURS,
    INPUT,
    INPUT_CACHED,
    INPUT_UNCACHED,
    OTHER,
    OUTPUT,
    Cell,
    Counts,
    Thresholds,
    dollar_cells,
    judge,
    overall_variance,
)
from routing.red_flags import (
    DailyRates,
    RedFlag,
    fallback_flag,
    invoice_variance_flag,
    price_change_flags,
    trend_flags,
    utilization,
    utilization_flag,
)

GPU_MODEL = "(gpu hours)"
_ZERO = Decimal(0)
_DATE_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")


def month_window(month: str) -> tuple[datetime, datetime]:
    """`YYYY-MM` → [first instant, first instant of the next month) in UTC."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ValueError(f"expected a month as YYYY-MM, got {month!r}")
    year, mon = int(match.group(1)), int(match.group(2))
    start = datetime(year, mon, 1, tzinfo=UTC)
    days = calendar.monthrange(year, mon)[1]
    return start, start + timedelta(days=days)


def base_model(name: str) -> str:
    """The model a provider bills: simulator `::directives` are not part of it."""
    return name.partition("::")[0]


def match_model(invoice_model: str, ledger_models: set[str]) -> str:
    """The ledger's name for an invoice's model: exact, case-insensitive, or the invoice's
    dated snapshot of a ledger alias (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`)."""
    if invoice_model in ledger_models:
        return invoice_model
    lower = {m.lower(): m for m in ledger_models}
    if invoice_model.lower() in lower:
        return lower[invoice_model.lower()]
    undated = _DATE_SUFFIX.sub("", invoice_model)
    if undated != invoice_model and undated.lower() in lower:
        return lower[undated.lower()]
    return invoice_model


def _tokens(d: LedgerDay) -> dict[str, int]:
    return {
        INPUT_UNCACHED: d.input_uncached,
        INPUT_CACHED: d.cached_read,
        CACHE_WRITE: d.cache_write,
        OUTPUT: d.output,
    }


def _rates(book: PriceBook, d: LedgerDay, batch: bool = False) -> dict[str, Decimal] | None:
    at = datetime(d.day.year, d.day.month, d.day.day, tzinfo=UTC)
    price = (
        book.batch_price_for(d.deployment, d.upstream_model, d.provider_kind, at) if batch else None
    )
    if price is None:  # live, or no batch rate known (the gateway charged the live one)
        price = book.price_for(d.deployment, d.upstream_model, d.provider_kind, at)
    if d.provider_kind == "dedicated":
        return dict.fromkeys((INPUT_UNCACHED, INPUT_CACHED, CACHE_WRITE, OUTPUT), _ZERO)
    if price is None:
        return None
    return {
        INPUT_UNCACHED: price.input,
        INPUT_CACHED: price.cached_input,
        CACHE_WRITE: price.cache_write,
        OUTPUT: price.output,
    }


def build_cells(
    ledger: Sequence[LedgerDay],
    invoice: Sequence[InvoiceDay],
    providers: set[str],
    book: PriceBook,
    config: GatewayConfig,
    start: datetime,
    end: datetime,
    batch: Sequence[LedgerDay] = (),
    live_usd: dict[tuple[str, str, date, str], Decimal] | None = None,
) -> tuple[list[Cell], dict[tuple[str, str], Counts], int]:
    """Join both sides per provider × model × day × token type (on small, pre-aggregated
    rows). Returns the cells, request counts per model and the unpriced-attempt count.

    `ledger` is the live side; `batch` the attempts billed through a provider's batch API,
    compared with the invoice's `batch_…` lines as `<model> (batch)` at the batch rate. When
    given, `live_usd` receives what each batch cell's tokens cost at the live rate."""
    metered: dict[tuple[str, str, date, str], list[Decimal | None]] = {}
    attempts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    ledger_models: dict[str, set[str]] = defaultdict(set)
    unpriced = 0
    sides = [(d, False) for d in ledger] + [(d, True) for d in batch]
    for d, billed_batch in sides:
        if d.provider not in providers:
            continue
        model = base_model(d.upstream_model)
        ledger_models[d.provider].add(model)
        if billed_batch:
            model = batch_model(model)
        unpriced += d.unpriced
        seen = attempts[(d.provider, model)]
        seen[0] += d.attempts
        seen[1] += d.failed
        if d.provider_kind == "dedicated":
            continue  # a GPU is billed by the hour: its tokens are not on the bill
        rates = _rates(book, d, billed_batch)
        live = _rates(book, d) if billed_batch and live_usd is not None else None
        for token_type, n in _tokens(d).items():
            key = (d.provider, model, d.day, token_type)
            slot = metered.setdefault(key, [_ZERO, _ZERO])
            slot[0] = (slot[0] or _ZERO) + n
            usd = None if rates is None else Decimal(n) * rates[token_type] / MILLION
            slot[1] = None if usd is None or slot[1] is None else slot[1] + usd
            if live is not None and live_usd is not None:
                live_usd[key] = live_usd.get(key, _ZERO) + Decimal(n) * live[token_type] / MILLION

    billed: dict[tuple[str, str, date, str], list[Decimal | None]] = {}
    requests: dict[tuple[str, str], int] = {}
    undivided: set[tuple[str, str]] = set()
    for line in invoice:
        token_type, billed_batch = split_batch(line.token_type)
        if token_type == GPU_HOURS:
            model, day = GPU_MODEL, start.date()  # hours are compared for the whole month
        else:
            model, day = match_model(line.model, ledger_models[line.provider]), line.day
            if billed_batch:
                model = batch_model(model)
        if token_type == INPUT:
            undivided.add((line.provider, model))
        slot = billed.setdefault((line.provider, model, day, token_type), [None, None])
        if line.tokens is not None:
            slot[0] = (slot[0] or _ZERO) + line.tokens
        if line.amount_usd is not None:
            slot[1] = (slot[1] or _ZERO) + line.amount_usd
        if line.requests is not None:
            requests[(line.provider, model)] = (
                requests.get((line.provider, model), 0) + line.requests
            )

    # An export that does not split cache reads out is compared on undivided input.
    for provider, model, day, token_type in list(metered):
        if (provider, model) in undivided and token_type in (
            INPUT_UNCACHED,
            INPUT_CACHED,
            CACHE_WRITE,
        ):
            tok, usd = metered.pop((provider, model, day, token_type))
            slot = metered.setdefault((provider, model, day, INPUT), [_ZERO, _ZERO])
            slot[0] = (slot[0] or _ZERO) + (tok or _ZERO)
            slot[1] = None if usd is None or slot[1] is None else slot[1] + usd
            if live_usd is not None and (provider, model, day, token_type) in live_usd:
                moved = live_usd.pop((provider, model, day, token_type))
                whole = (provider, model, day, INPUT)
                live_usd[whole] = live_usd.get(whole, _ZERO) + moved

    _dedicated_hours(config, providers, metered, start, end)

    cells = []
    for key in sorted(set(metered) | set(billed), key=lambda k: (k[0], k[1], k[2], k[3])):
        provider, model, day, token_type = key
        m_tok, m_usd = metered.get(key, [_ZERO, _ZERO])
        i_tok, i_usd = billed.get(key, [None, None])
        if m_tok == 0 and i_tok is None and i_usd is None:
            continue  # e.g. no cache writes on either side
        cells.append(Cell(provider, model, day, token_type, m_tok or _ZERO, i_tok, m_usd, i_usd))
    counts = {
        key: Counts(
            ledger_attempts=n[0], ledger_failed_attempts=n[1], invoiced_requests=requests.get(key)
        )
        for key, n in attempts.items()
    }
    return cells, counts, unpriced


def _dedicated_hours(
    config: GatewayConfig,
    providers: set[str],
    metered: dict[tuple[str, str, date, str], list[Decimal | None]],
    start: datetime,
    end: datetime,
) -> None:
    """A dedicated provider's expected bill: every hour of the month (up to now, for the
    current month) at its hourly rate. The ledger cannot meter idle hours; this is the
    contract the invoice is checked against."""
    hours = Decimal((min(end, datetime.now(UTC)) - start).total_seconds()) / 3600
    for name in providers:
        provider = config.providers.get(name)
        if provider is None or provider.kind != "dedicated":
            continue
        rate = None if provider.hourly_usd is None else Decimal(repr(provider.hourly_usd))
        metered[(name, GPU_MODEL, start.date(), GPU_HOURS)] = [
            max(hours, _ZERO),
            None if rate is None else max(hours, _ZERO) * rate,
        ]


async def reconcile(
    store: ReportStore,
    month: str,
    files: Sequence[ImportedFile],
    config: GatewayConfig,
    book: PriceBook,
    thresholds: Thresholds | None = None,
    *,
    on_stored: Callable[[int], None] | None = None,
) -> ReconcileResult:
    started = time.perf_counter()
    thresholds = thresholds or Thresholds()
    start, end = month_window(month)
    stored = await store.save_imports(files)
    if on_stored is not None:
        on_stored(stored)
    providers = {f.provider for f in files}
    import_ids = sorted({f.import_id for f in files})
    ledger = await store.ledger_days(start, end)
    live_side, batch_side = split_ledger(ledger, await provider_batch_days(store, start, end))
    invoice = await store.invoice_days(import_ids, start, end)
    notes = []
    if not invoice:
        notes.append(f"no invoice line falls inside {month} (UTC); check the files' periods")
    live_usd: dict[tuple[str, str, date, str], Decimal] = {}
    cells, counts, unpriced = build_cells(
        live_side, invoice, providers, book, config, start, end, batch_side, live_usd
    )
    verdicts = judge(cells, counts, thresholds)
    batch_price_causes(verdicts, cells, live_usd)
    verdicts.sort(key=lambda v: (not v.flagged, v.provider, v.model))
    token_var, cost_var = overall_variance(cells)
    priced = dollar_cells(cells)
    invoiced_usd = sum((c.invoiced_usd or _ZERO for c in priced), _ZERO) if priced else None
    # Dollars are compared where the invoice has them; metered spend on cells the invoice
    # does not price (Fireworks' metrics, GPU hours without a rate) is reported apart.
    metered_usd = sum((c.metered_usd or _ZERO for c in priced), _ZERO)
    metered_all = sum((c.metered_usd or _ZERO for c in cells if c.token_type != OTHER), _ZERO)
    non_token = sum((c.invoiced_usd or _ZERO for c in cells if c.token_type == OTHER), _ZERO)
    unreconciled: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    for d in ledger:
        if d.provider not in providers:
            unreconciled[d.provider] += d.cost_usd
    flags = ledger_flags(ledger, providers, config, cells, start, end)
    for v in verdicts:
        flags += invoice_variance_flag(f"{v.provider} {v.model}", v.cost_variance_pct)
    versions = await store.price_versions(start, end)
    flags += price_change_flags(
        [(p, d, vs) for p, d, vs in split_versions(versions) if p in providers]
    )
    if unpriced:
        notes.append(
            f"{unpriced:,} attempt(s) had no known price: their tokens are compared, their "
            "dollars count as unknown"
        )
    for f in files:
        notes.extend(f"{f.source_file}: {n}" for n in f.notes)
    result = ReconcileResult(
        month=month,
        start=start,
        end=end,
        thresholds=thresholds,
        imports=list(files),
        cells=cells,
        verdicts=verdicts,
        token_variance_pct=token_var,
        cost_variance_pct=cost_var,
        metered_usd=metered_usd,
        invoiced_usd=invoiced_usd,
        metered_unbilled_usd=metered_all - metered_usd,
        non_token_usd=non_token,
        unreconciled=dict(unreconciled),
        red_flags=flags,
        unpriced_attempts=unpriced,
        notes=notes,
    )
    result.spend_by_role = [
        row for row in await store.spend_by_role(start, end) if row[0] in providers
    ]
    result.consensus = await consensus_lines(store, start, end)
    result.answered = await store.answered_requests(start, end)
    result.elapsed_s = time.perf_counter() - started
    result.run_id = await store.save_reconciliation(run_row(result))
    return result


def ledger_flags(
    ledger: Sequence[LedgerDay],
    providers: set[str],
    config: GatewayConfig,
    cells: Sequence[Cell],
    start: datetime,
    end: datetime,
) -> list[RedFlag]:
    """The LCPR report's trend, fallback and utilization flags, per reconciled provider,
    from the same per-day aggregates (no second pass over the ledger)."""
    per_day: dict[tuple[str, date], list[int]] = defaultdict(lambda: [0] * 7)
    busy: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    for d in ledger:
        if d.provider not in providers:
            continue
        acc = per_day[(d.provider, d.day)]
        # First attempts stand in for requests: every request has exactly one.
        for i, v in enumerate(
            (
                d.attempts - d.retries - d.fallbacks,
                d.retries,
                d.gated,
                d.gate_passed,
                d.input_uncached + d.cached_read + d.cache_write,
                d.cached_read,
                d.fallbacks,
            )
        ):
            acc[i] += v
        busy[d.provider] += d.busy_seconds
    daily = [
        DailyRates(p, day, v[0], v[1], v[2], v[3], v[4], v[5]) for (p, day), v in per_day.items()
    ]
    period_end = min(end, datetime.now(UTC))
    flags = trend_flags(daily, (period_end + timedelta(days=1)).date())
    for provider in sorted(providers):
        first = sum(v[0] for (p, _), v in per_day.items() if p == provider)
        fallbacks = sum(v[6] for (p, _), v in per_day.items() if p == provider)
        flags += fallback_flag(provider, Decimal(fallbacks) / first if first else None)
        spec = config.providers.get(provider)
        if spec is None or spec.kind != "dedicated":
            continue
        billed = [
            c.invoiced_tokens
            for c in cells
            if c.provider == provider and c.token_type == GPU_HOURS and c.invoiced_tokens
        ]
        hours = billed[0] if billed else Decimal((period_end - start).total_seconds()) / 3600
        flags += utilization_flag(
            provider, utilization(busy[provider], hours, spec.max_concurrency or 1)
        )
    return flags
