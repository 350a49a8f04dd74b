"""Metering reconciliation arithmetic: variances, flags and the causes the data can test.

Pure: the caller hands in per-day aggregates of the ledger and of the imported invoices
(provider × model × UTC day × token type) and gets back per-model verdicts. Nothing here
reads a clock, a file or a database.

Variance is always (invoiced − metered) / metered: positive means the provider billed more
than Farebox metered, the direction that costs money.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

# Token types an invoice line can carry. `input` is undivided prompt tokens, for exports that
# do not split cache reads out (Fireworks' billing metrics); the ledger side is collapsed to
# the same shape for that provider and model. `gpu_hours` are dedicated hours (tokens =
# hours); `other` is a charge that is not per token (tools, storage) and is only totalled.
INPUT_UNCACHED = "input_uncached"
INPUT_CACHED = "input_cached"
CACHE_WRITE = "cache_write"
OUTPUT = "output"
INPUT = "input"
GPU_HOURS = "gpu_hours"
OTHER = "other"
SPLIT_TYPES = (INPUT_UNCACHED, INPUT_CACHED, CACHE_WRITE, OUTPUT)
TOKEN_TYPES = (*SPLIT_TYPES, INPUT, GPU_HOURS, OTHER)
CACHE_TYPES = (INPUT_CACHED, CACHE_WRITE)

HUNDRED = Decimal(100)
_ZERO = Decimal(0)

# Cause codes, stable for the CSV and for tests.
UNMETERED_RETRIES = "unmetered_retries"
CACHE_BILLED_NOT_METERED = "cache_billed_not_metered"
CACHE_METERED_NOT_BILLED = "cache_metered_not_billed"
TOKENIZER_DRIFT = "tokenizer_drift"
PROVIDER_WIDE_EXCESS = "provider_wide_token_variance"
DAYS_MISSING_ON_INVOICE = "days_missing_on_invoice"
DAYS_MISSING_IN_LEDGER = "days_missing_in_ledger"
PRICE_TABLE_MISMATCH = "price_table_mismatch"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Flag limits in percent (absolute variance)."""

    token_pct: Decimal = Decimal(3)
    cost_pct: Decimal = Decimal(10)


@dataclass(frozen=True, slots=True)
class Cell:
    """One provider × model × UTC day × token type, both sides.

    None on the invoice side means the invoice has no line for it (which is not the same as
    a line of 0); `invoiced_usd` is None too for exports that carry no dollars.
    """

    provider: str
    model: str
    day: date
    token_type: str
    metered_tokens: Decimal
    invoiced_tokens: Decimal | None
    metered_usd: Decimal | None
    invoiced_usd: Decimal | None

    @property
    def token_variance_pct(self) -> Decimal | None:
        return variance_pct(self.metered_tokens, self.invoiced_tokens)

    @property
    def cost_variance_pct(self) -> Decimal | None:
        return variance_pct(self.metered_usd, self.invoiced_usd)


@dataclass(frozen=True, slots=True)
class Counts:
    """Request counts for one provider × model over the month, when both sides know them."""

    ledger_attempts: int = 0
    ledger_failed_attempts: int = 0
    invoiced_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Cause:
    code: str
    message: str


@dataclass(slots=True)
class ModelVerdict:
    provider: str
    model: str
    metered_tokens: dict[str, Decimal]
    invoiced_tokens: dict[str, Decimal]
    metered_usd: Decimal
    invoiced_usd: Decimal | None  # None: the invoice carries no dollars for this model
    token_variance_pct: Decimal | None
    cost_variance_pct: Decimal | None
    type_variance_pct: dict[str, Decimal | None]
    token_flag: bool = False
    cost_flag: bool = False
    causes: list[Cause] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return self.token_flag or self.cost_flag or bool(self.causes)


def variance_pct(metered: Decimal | None, invoiced: Decimal | None) -> Decimal | None:
    """(invoiced − metered) / metered in percent; None when it is undefined.

    Undefined means one side is unknown, or nothing was metered but something was billed
    (an infinite variance, reported as a missing-side cause instead of a number).
    """
    if metered is None or invoiced is None:
        return None
    if metered == 0:
        return _ZERO if invoiced == 0 else None
    return (invoiced - metered) / metered * HUNDRED


def _over(value: Decimal | None, limit: Decimal) -> bool:
    return value is not None and abs(value) > limit


def _sum(values: Iterable[Decimal | None]) -> Decimal | None:
    known = [v for v in values if v is not None]
    return sum(known, _ZERO) if known else None


def judge(
    cells: Sequence[Cell],
    counts: Mapping[tuple[str, str], Counts] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> list[ModelVerdict]:
    """One verdict per provider × model, flagged models first, then by provider and model."""
    counts = counts or {}
    by_model: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in cells:
        by_model[(cell.provider, cell.model)].append(cell)
    verdicts = [
        _judge_model(p, m, group, counts.get((p, m), Counts()), thresholds)
        for (p, m), group in by_model.items()
    ]
    _concentration(verdicts, by_model, thresholds)
    verdicts.sort(key=lambda v: (not v.flagged, v.provider, v.model))
    return verdicts


def _judge_model(
    provider: str, model: str, cells: list[Cell], counts: Counts, t: Thresholds
) -> ModelVerdict:
    metered: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    invoiced: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    invoiced_seen: set[str] = set()
    for cell in cells:
        if cell.token_type == OTHER:
            continue
        metered[cell.token_type] += cell.metered_tokens
        if cell.invoiced_tokens is not None:
            invoiced[cell.token_type] += cell.invoiced_tokens
            invoiced_seen.add(cell.token_type)
    token_cells = [c for c in cells if c.token_type not in (OTHER, GPU_HOURS)]
    metered_total = sum((c.metered_tokens for c in token_cells), _ZERO)
    invoiced_known = [c.invoiced_tokens for c in token_cells if c.invoiced_tokens is not None]
    invoiced_total = sum(invoiced_known, _ZERO) if invoiced_known else None
    # Dollars are compared only for a model the invoice prices at all, so an export without
    # dollars (Fireworks' metrics, a usage export alone) does not read as a 100 % cost
    # variance; within such a model a cell the invoice leaves out was billed $0.
    priced = dollar_cells(cells)
    metered_usd_all = _sum(c.metered_usd for c in cells if c.token_type != OTHER) or _ZERO
    metered_usd_priced = _sum(c.metered_usd for c in priced)
    invoiced_usd = _sum(c.invoiced_usd or _ZERO for c in priced) if priced else None
    type_var = {
        tt: variance_pct(metered[tt], invoiced[tt] if tt in invoiced_seen else None)
        for tt in sorted(set(metered) | invoiced_seen, key=TOKEN_TYPES.index)
    }
    verdict = ModelVerdict(
        provider=provider,
        model=model,
        metered_tokens=dict(metered),
        invoiced_tokens=dict(invoiced),
        metered_usd=metered_usd_all,
        invoiced_usd=invoiced_usd,
        token_variance_pct=variance_pct(metered_total, invoiced_total),
        cost_variance_pct=variance_pct(metered_usd_priced, invoiced_usd) if priced else None,
        type_variance_pct=type_var,
    )
    # A token type under 1 % of the model's volume (a stray cache write) is not flagged alone.
    significant = max(metered_total, invoiced_total or _ZERO) / HUNDRED

    def type_flag(tt: str, v: Decimal | None) -> bool:
        if v is None:  # billed, never metered
            return invoiced[tt] > significant
        return abs(v) > t.token_pct and max(metered[tt], invoiced[tt]) > significant

    verdict.token_flag = _over(verdict.token_variance_pct, t.token_pct) or any(
        type_flag(tt, v) for tt, v in type_var.items() if tt in invoiced_seen and tt != GPU_HOURS
    )
    if GPU_HOURS in invoiced_seen and _over(type_var.get(GPU_HOURS), t.token_pct):
        verdict.token_flag = True
    verdict.cost_flag = _over(verdict.cost_variance_pct, t.cost_pct) or (
        verdict.cost_variance_pct is None and bool(priced) and (invoiced_usd or _ZERO) > 0
    )
    verdict.causes.extend(_missing_days(cells))
    verdict.causes.extend(_cache_causes(metered, invoiced, invoiced_seen, t))
    if counts.invoiced_requests is not None and counts.invoiced_requests > counts.ledger_attempts:
        extra = counts.invoiced_requests - counts.ledger_attempts
        share = Decimal(extra) / Decimal(max(counts.ledger_attempts, 1)) * HUNDRED
        if share > t.token_pct / 3 or verdict.token_flag:
            verdict.causes.append(
                Cause(
                    UNMETERED_RETRIES,
                    f"the provider counted {counts.invoiced_requests:,} requests, the ledger "
                    f"{counts.ledger_attempts:,} attempts ({extra:,} unmetered, {share:.1f} %): "
                    "retries made outside Farebox (SDK or client) or attempts lost before "
                    "the ledger",
                )
            )
    tokens_agree = verdict.token_variance_pct is not None and not verdict.token_flag
    if tokens_agree and verdict.cost_flag:
        verdict.causes.append(_price_mismatch(cells))
    return verdict


def _missing_days(cells: list[Cell]) -> list[Cause]:
    metered_days: set[date] = set()
    invoiced_days: set[date] = set()
    for c in cells:
        if c.metered_tokens > 0:
            metered_days.add(c.day)
        if (c.invoiced_tokens or 0) > 0 or (c.invoiced_usd or 0) > 0:
            invoiced_days.add(c.day)
    out = []
    if not invoiced_days or not metered_days:
        # A model entirely absent from one side is one finding, not thirty missing days.
        side = "invoice" if not invoiced_days else "ledger"
        code = DAYS_MISSING_ON_INVOICE if side == "invoice" else DAYS_MISSING_IN_LEDGER
        present = metered_days or invoiced_days
        if present:
            out.append(Cause(code, f"the model is absent from the {side} for the whole month"))
        return out
    only_ledger = sorted(metered_days - invoiced_days)
    only_invoice = sorted(invoiced_days - metered_days)
    if only_ledger:
        out.append(
            Cause(DAYS_MISSING_ON_INVOICE, f"metered but not invoiced on {_days(only_ledger)}")
        )
    if only_invoice:
        out.append(
            Cause(DAYS_MISSING_IN_LEDGER, f"invoiced but not metered on {_days(only_invoice)}")
        )
    return out


def _days(days: list[date]) -> str:
    shown = ", ".join(d.isoformat() for d in days[:6])
    return shown + (f" and {len(days) - 6} more" if len(days) > 6 else "")


def _cache_causes(
    metered: Mapping[str, Decimal],
    invoiced: Mapping[str, Decimal],
    invoiced_seen: set[str],
    t: Thresholds,
) -> list[Cause]:
    if INPUT in invoiced_seen or not invoiced_seen & set(SPLIT_TYPES):
        return []  # the invoice does not split cache out: nothing to compare
    m_cache = sum((metered.get(tt, _ZERO) for tt in CACHE_TYPES), _ZERO)
    i_cache = sum((invoiced.get(tt, _ZERO) for tt in CACHE_TYPES), _ZERO)
    m_rest = metered.get(INPUT_UNCACHED, _ZERO) + metered.get(OUTPUT, _ZERO)
    i_rest = invoiced.get(INPUT_UNCACHED, _ZERO) + invoiced.get(OUTPUT, _ZERO)
    # Measured against the non-cache variance so a uniform tokenizer drift (which moves
    # cache counts as much as the rest) is not mistaken for a cache metering gap.
    rest = variance_pct(m_rest, i_rest) or _ZERO
    cache = variance_pct(m_cache, i_cache)
    if i_cache > 0 and (m_cache == 0 or (cache is not None and cache - rest > t.token_pct)):
        return [
            Cause(
                CACHE_BILLED_NOT_METERED,
                f"cache tokens billed but not metered: invoice {i_cache:,.0f} cached/cache-write "
                f"tokens, ledger {m_cache:,.0f} (cache usage fields dropped by an adapter, or "
                "a provider that reports cache hits only on its invoice)",
            )
        ]
    if m_cache > 0 and (i_cache == 0 or (cache is not None and rest - cache > t.token_pct)):
        return [
            Cause(
                CACHE_METERED_NOT_BILLED,
                f"cache tokens metered but not billed as cache: ledger {m_cache:,.0f}, invoice "
                f"{i_cache:,.0f} (the provider bills them as plain input, or the ledger "
                "reads cache fields the provider does not discount)",
            )
        ]
    return []


def _price_mismatch(cells: list[Cell]) -> Cause:
    parts = []
    for tt in TOKEN_TYPES:
        group = [c for c in cells if c.token_type == tt and c.invoiced_usd is not None]
        m_tok = sum((c.metered_tokens for c in group), _ZERO)
        i_tok = sum((c.invoiced_tokens or _ZERO for c in group), _ZERO)
        m_usd = _sum(c.metered_usd for c in group)
        i_usd = _sum(c.invoiced_usd for c in group)
        if not group or m_usd is None or i_usd is None or m_tok == 0 or i_tok == 0:
            continue
        m_rate = m_usd / m_tok * 1_000_000
        i_rate = i_usd / i_tok * 1_000_000
        if abs(m_rate - i_rate) > Decimal("0.0001") * max(m_rate, i_rate, Decimal(1)):
            parts.append(f"{tt} ${m_rate:.4f}/M metered vs ${i_rate:.4f}/M invoiced")
    detail = "; ".join(parts) if parts else "rates differ"
    return Cause(
        PRICE_TABLE_MISMATCH,
        f"tokens agree but dollars do not: {detail} (update config/prices.yaml or the "
        "deployment's price: override)",
    )


def _concentration(
    verdicts: list[ModelVerdict], cells: Mapping[tuple[str, str], list[Cell]], t: Thresholds
) -> None:
    """Name tokenizer drift when a steady excess sits on one model of a provider only."""
    by_provider: dict[str, list[ModelVerdict]] = defaultdict(list)
    for v in verdicts:
        by_provider[v.provider].append(v)
    for group in by_provider.values():
        steady = [
            v
            for v in group
            if v.token_flag
            and not any(
                c.code in (CACHE_BILLED_NOT_METERED, CACHE_METERED_NOT_BILLED) for c in v.causes
            )
            and _steady_excess(cells[(v.provider, v.model)], t)
        ]
        flagged = [v for v in group if v.token_flag]
        for v in steady:
            pct = v.token_variance_pct or _ZERO
            if len(flagged) == 1:
                others = len(group) - 1
                v.causes.append(
                    Cause(
                        TOKENIZER_DRIFT,
                        f"tokenizer drift concentrated in {v.model}: a steady {pct:+.2f} % on "
                        f"every day both sides have, while the provider's {others} other "
                        f"model(s) agree (the provider counts tokens with a different "
                        "tokenizer or template than the one that produced the usage Farebox "
                        "metered)",
                    )
                )
            else:
                v.causes.append(
                    Cause(
                        PROVIDER_WIDE_EXCESS,
                        f"a steady {pct:+.2f} % on {v.model} and {len(flagged) - 1} other "
                        "model(s) of this provider: traffic reaching the account outside "
                        "Farebox, or a provider-wide counting change",
                    )
                )


def _steady_excess(cells: list[Cell], t: Thresholds) -> bool:
    """Non-cache token variance with the same sign on every common day, each day beyond
    half the threshold, and no wider spread than its own mean: a rate, not an incident."""
    per_day: dict[date, list[Decimal]] = defaultdict(lambda: [_ZERO, _ZERO])
    for c in cells:
        if c.token_type not in (INPUT_UNCACHED, OUTPUT, INPUT) or c.invoiced_tokens is None:
            continue
        per_day[c.day][0] += c.metered_tokens
        per_day[c.day][1] += c.invoiced_tokens
    daily = [variance_pct(m, i) for m, i in per_day.values() if m > 0]
    values = [v for v in daily if v is not None]
    if not values:
        return False
    mean = sum(values, _ZERO) / len(values)
    same_sign = all(v > 0 for v in values) or all(v < 0 for v in values)
    beyond = all(abs(v) > t.token_pct / 2 for v in values)
    spread = max(values) - min(values)
    return same_sign and beyond and spread <= max(abs(mean), Decimal(1))


def within(verdicts: Sequence[ModelVerdict]) -> bool:
    """True when no model is flagged: the run's exit code is 0."""
    return not any(v.flagged for v in verdicts)


def overall_variance(cells: Sequence[Cell]) -> tuple[Decimal | None, Decimal | None]:
    """Month-wide (token, cost) variance over every token cell both sides priced or counted."""
    tok = [c for c in cells if c.token_type not in (OTHER, GPU_HOURS)]
    m_tok = sum((c.metered_tokens for c in tok), _ZERO)
    known = [c.invoiced_tokens for c in tok if c.invoiced_tokens is not None]
    i_tok = sum(known, _ZERO) if known else None
    # Non-token charges (tools, storage) cannot be metered; they are totalled apart.
    priced = dollar_cells(cells)
    m_usd = _sum(c.metered_usd for c in priced)
    i_usd = _sum(c.invoiced_usd or _ZERO for c in priced)
    return variance_pct(m_tok, i_tok), variance_pct(m_usd, i_usd) if priced else None


def dollar_cells(cells: Sequence[Cell]) -> list[Cell]:
    """The token cells of every provider × model whose invoice carries dollars."""
    priced = {
        (c.provider, c.model) for c in cells if c.invoiced_usd is not None and c.token_type != OTHER
    }
    return [c for c in cells if c.token_type != OTHER and (c.provider, c.model) in priced]
