"""`farebox lcpr`: loaded cost per successful request from the ledger, and `lcpr estimate`.

SQL aggregates per segment (and per segment × day for the trend flags) come from
:class:`ReportStore`; the arithmetic is routing.lcpr and routing.red_flags.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.config.schema import GatewayConfig
from gateway.ledger.pricing import PriceBook
from gateway.reports.batch_share import BatchReport, batch_report
from gateway.reports.batch_share import report_dict as batch_dict
from gateway.reports.consensus import consensus_lines, line_dict
from gateway.reports.guard_hits import guard_hits, hits_dict
from gateway.reports.reconcile import month_window
from gateway.reports.store import ReportStore
from routing.guard_summary import GuardHits
from routing.lcpr import (
    HOURS_PER_MONTH,
    ConsensusLine,
    DeploymentCost,
    Estimate,
    LoadedCosts,
    SegmentLcpr,
    Workload,
    estimate,
    segment_lcpr,
)
from routing.red_flags import (
    RedFlag,
    fallback_flag,
    invoice_variance_flag,
    price_change_flags,
    trend_flags,
    utilization,
)

_ZERO = Decimal(0)


def _dec(value: float | None) -> Decimal | None:
    return None if value is None else Decimal(repr(value))


@dataclass(frozen=True, slots=True)
class DedicatedLine:
    provider: str
    paid_hours: Decimal
    hours_from: str  # "invoice" or "month" (every hour of the period)
    hourly_usd: Decimal | None
    cost_usd: Decimal
    utilization: Decimal | None


@dataclass(slots=True)
class LcprReport:
    month: str
    by: str
    segments: list[SegmentLcpr]
    dedicated: list[DedicatedLine]
    red_flags: list[RedFlag]
    engineering_usd: Decimal
    repair_cost_usd: Decimal
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Agreement rate and cost multiple per consensus route.
    consensus: list[ConsensusLine] = field(default_factory=list)
    # Batch-eligible share per workload and dedicated utilization before/after batch fill.
    batch: BatchReport | None = None
    # Per route, the requests a guard check fired on (gateway/reports/guard_hits.py).
    guard: list[GuardHits] = field(default_factory=list)

    @property
    def total_loaded_usd(self) -> Decimal:
        # Dedicated hours no segment used are still paid: count them in the total.
        allocated = sum((s.dedicated_cost_usd for s in self.segments), _ZERO)
        paid = sum((d.cost_usd for d in self.dedicated), _ZERO)
        return sum((s.loaded_cost_usd for s in self.segments), _ZERO) + max(paid - allocated, _ZERO)

    @property
    def total_requests(self) -> int:
        return sum(s.requests for s in self.segments)

    @property
    def total_successful(self) -> int:
        """The LCPR denominator: successful requests (gateway.ledger.success)."""
        return sum(s.successful for s in self.segments)

    @property
    def total_lcpr(self) -> Decimal | None:
        n = self.total_successful
        return self.total_loaded_usd / n if n else None


def _hourly(config: GatewayConfig, book: PriceBook, provider: str, at: datetime) -> Decimal | None:
    spec = config.providers.get(provider)
    if spec is not None and spec.hourly_usd is not None:
        return _dec(spec.hourly_usd)
    for dep_id, dep in config.deployments.items():
        if dep.provider == provider:
            price = book.price_for(dep_id, dep.model, "dedicated", at)
            if price is not None and price.hourly_usd is not None:
                return price.hourly_usd
    return None


async def lcpr_report(
    store: ReportStore,
    month: str,
    by: str,
    config: GatewayConfig,
    book: PriceBook,
    *,
    now: datetime | None = None,
) -> LcprReport:
    started = time.perf_counter()
    start, end = month_window(month)
    now = now or datetime.now(UTC)
    # The current month is paid up to now, not to its end.
    period_end = min(end, max(now, start))
    totals, daily = await store.segment_report(by, start, end)
    billed_hours = await store.paid_gpu_hours(start, end)
    use = {u.provider: u for u in await store.dedicated_use(start, end)}
    notes: list[str] = []
    dedicated: list[DedicatedLine] = []
    dedicated_names = sorted(
        {n for n, p in config.providers.items() if p.kind == "dedicated"} | set(use)
    )
    for name in dedicated_names:
        rate = _hourly(config, book, name, start)
        if name in billed_hours:
            hours, source = billed_hours[name], "invoice"
        else:
            hours, source = Decimal((period_end - start).total_seconds()) / 3600, "month"
        cost = hours * rate if rate is not None else _ZERO
        if rate is None:
            notes.append(f"{name}: dedicated without hourly_usd; its hours are not charged")
        spec = config.providers.get(name)
        slots = spec.max_concurrency if spec is not None and spec.max_concurrency else 1
        busy = use[name].busy_seconds if name in use else _ZERO
        dedicated.append(
            DedicatedLine(name, hours, source, rate, cost, utilization(busy, hours, slots))
        )
    lc = config.lcpr
    engineering = (_dec(lc.engineering_hours_per_month) or _ZERO) * (
        _dec(lc.hourly_rate_usd) or _ZERO
    )
    repair = _dec(lc.repair_cost_usd) or _ZERO
    costs = LoadedCosts(
        dedicated_usd={d.provider: d.cost_usd for d in dedicated},
        engineering_usd=engineering,
        repair_cost_usd=repair,
    )
    segments = segment_lcpr(totals, costs)
    flags = trend_flags(daily, (period_end + timedelta(days=1)).date())
    for s in segments:
        flags += fallback_flag(s.segment, s.fallback_share)
    # The batch tier's flags: deferrable work run live, and each dedicated provider's
    # utilization with batch fill (dedicated_underused, naming deferrable work that ran on
    # paid deployments meanwhile).
    batch = await batch_report(
        store, config, book, start, end, {d.provider: (d.paid_hours, d.cost_usd) for d in dedicated}
    )
    flags += batch.red_flags
    notes += batch.notes
    latest = await store.latest_reconciliation(month)
    if latest is not None:
        flags += invoice_variance_flag(
            f"reconciliation {latest['id']}", latest["cost_variance_pct"]
        )
    flags += price_change_flags(await store.price_versions(start, end))
    report = LcprReport(
        month=month,
        by=by,
        segments=segments,
        dedicated=dedicated,
        red_flags=flags,
        engineering_usd=engineering,
        repair_cost_usd=repair,
        notes=notes,
        batch=batch,
    )
    report.consensus = await consensus_lines(store, start, end)
    report.guard = await guard_hits(store.engine, start, end)
    report.elapsed_s = time.perf_counter() - started
    return report


def _s(value: Decimal | None, places: int = 8) -> str | None:
    return None if value is None else str(round(value, places))


def report_dict(r: LcprReport) -> dict[str, Any]:
    return {
        "month": r.month,
        "by": r.by,
        "lcpr_usd": _s(r.total_lcpr),
        "loaded_cost_usd": _s(r.total_loaded_usd, 6),
        "requests": r.total_requests,
        "successful": r.total_successful,
        "segments": [
            {
                "segment": s.segment,
                "requests": s.requests,
                "successful": s.successful,
                "token_cost_usd": _s(s.token_cost_usd),
                "dedicated_cost_usd": _s(s.dedicated_cost_usd),
                "repair_cost_usd": _s(s.repair_cost_usd),
                "engineering_cost_usd": _s(s.engineering_cost_usd),
                "loaded_cost_usd": _s(s.loaded_cost_usd),
                "lcpr_usd": _s(s.lcpr),
                "clean_attempt_usd": _s(s.clean_attempt_usd),
                "overhead_ratio": _s(s.overhead_ratio, 4),
                "retry_rate": _s(s.retry_rate, 4),
                "gate_pass_rate": _s(s.gate_pass_rate, 4),
                "fallback_share": _s(s.fallback_share, 4),
                "cache_hit_rate": _s(s.cache_hit_rate, 4),
                "response_cache_hits": s.cache_hits,
                "response_cache_rate": _s(s.response_cache_rate, 4),
                "response_cache_saved_usd": _s(s.saved_usd),
            }
            for s in r.segments
        ],
        "dedicated": [
            {
                "provider": d.provider,
                "paid_hours": _s(d.paid_hours, 2),
                "hours_from": d.hours_from,
                "hourly_usd": _s(d.hourly_usd, 4),
                "cost_usd": _s(d.cost_usd, 4),
                "utilization": _s(d.utilization, 4),
            }
            for d in r.dedicated
        ],
        "red_flags": [
            {"code": f.code, "subject": f.subject, "message": f.message} for f in r.red_flags
        ],
        "notes": r.notes,
        "consensus": [line_dict(line) for line in r.consensus],
        "guard_hits": [hits_dict(hits) for hits in r.guard],
        "batch": None if r.batch is None else batch_dict(r.batch),
    }


# --- what-if -------------------------------------------------------------------------------


def deployment_costs(
    config: GatewayConfig,
    book: PriceBook,
    ids: Sequence[str],
    at: datetime,
    gpu_hours: Decimal = HOURS_PER_MONTH,
) -> list[DeploymentCost]:
    """Prices for the named deployments, from the same book the gateway charges with."""
    out = []
    for dep_id in ids:
        dep = config.deployments.get(dep_id)
        if dep is None:
            raise KeyError(dep_id)
        provider = config.providers[dep.provider]
        price = book.price_for(dep_id, dep.model, provider.kind, at)
        if provider.kind == "dedicated":
            hourly = _hourly(config, book, dep.provider, at)
            if hourly is None:
                raise ValueError(
                    f"{dep_id}: dedicated, but neither the provider nor "
                    "prices.yaml gives an hourly_usd"
                )
            out.append(DeploymentCost(dep_id, "dedicated", hourly_usd=hourly, gpu_hours=gpu_hours))
            continue
        if price is None:
            raise ValueError(f"{dep_id}: no price known (prices.yaml, price: or litellm's map)")
        out.append(
            DeploymentCost(
                dep_id,
                provider.kind,
                input=price.input,
                output=price.output,
                cached_input=price.cached_input,
            )
        )
    return out


def estimates(workload: Workload, deployments: Sequence[DeploymentCost]) -> list[Estimate]:
    return [estimate(workload, d) for d in deployments]


def estimate_dict(e: Estimate) -> dict[str, Any]:
    return {
        "deployment": e.deployment,
        "kind": e.kind,
        "raw_usd_per_request": _s(e.raw_per_request, 10),
        "lcpr_usd": _s(e.lcpr, 10),
        "monthly_cost_usd": _s(e.monthly_cost, 4),
        "token_cost_usd": _s(e.token_cost, 4),
        "repair_cost_usd": _s(e.repair_cost, 4),
        "engineering_cost_usd": _s(e.engineering_cost, 4),
        "attempts": _s(e.attempts, 2),
        "successful": _s(e.successful, 2),
        "overhead_ratio": _s(e.overhead_ratio, 4),
    }
