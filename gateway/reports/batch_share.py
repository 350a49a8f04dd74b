"""The batch tier in `farebox lcpr`: the batch-eligible share per workload and dedicated
utilization before/after batch fill, with their red flags.

The queries are store_batch.py (aggregates only), the arithmetic routing.batch_share; this
module prices the deferrable live tokens at the batch rate and joins the ledger groups to the
config (which workloads are deferrable, which routes can use which dedicated provider).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from decimal import Decimal
from typing import Any

from gateway.config.schema import GatewayConfig
from gateway.ledger.pricing import PriceBook
from gateway.reports.store_batch import BatchQueries, RequestGroup, SpendGroup
from routing.batch_share import (
    DedicatedFill,
    DedicatedFillTotals,
    PaidElsewhere,
    WorkloadBatch,
    batch_live_flag,
    dedicated_fill,
    dedicated_underused_flag,
    total,
)
from routing.cost import Usage, attempt_cost
from routing.red_flags import RedFlag

_ZERO = Decimal(0)
BATCH_RATE_SOURCE = (
    "PriceBook.batch_price_for (explicit batch price, the provider's batch_discount, or "
    "litellm's batch rates; else the live price)"
)
DEFINITION = (
    "Batch-eligible share: requests of a workload in lcpr.deferrable_workloads that ran live "
    "rather than as batch lines, their cost (every attempt) and the same tokens at the batch "
    "rate. Dedicated fill: utilization = busy slot-seconds / (max_concurrency × paid "
    "seconds), live attempts alone and with `batch` attempts; $ / success = paid hours × "
    "rate / successful requests answered, live alone and with batch lines."
)


@dataclass(slots=True)
class BatchReport:
    workloads: list[WorkloadBatch]
    total: WorkloadBatch
    dedicated: list[DedicatedFill]
    red_flags: list[RedFlag]
    batch_rate: str = BATCH_RATE_SOURCE
    notes: list[str] = field(default_factory=list)


def _batch_rate_cost(book: PriceBook, g: SpendGroup) -> tuple[Decimal | None, bool]:
    """The group's tokens at its deployment's batch rate on its day (dedicated: $0, its
    hours are paid whatever runs on them), and whether a batch rate was known. Without one
    a batch line is charged the live price (PriceBook.batch_price_for), so that is the
    figure; None when not even a live price is known."""
    if g.provider_kind == "dedicated":
        return _ZERO, True
    at = datetime.combine(g.day, time(12), tzinfo=UTC)
    price = book.batch_price_for(g.deployment, g.upstream_model, g.provider_kind, at)
    known = price is not None
    if price is None:
        price = book.price_for(g.deployment, g.upstream_model, g.provider_kind, at)
    usage = Usage(g.input_uncached, g.cached_read, g.cache_write, g.output)
    return attempt_cost(usage, price, dedicated=False), known


def _workload_lines(
    requests: Sequence[RequestGroup],
    spend: Sequence[SpendGroup],
    deferrable: Sequence[str],
    book: PriceBook,
    notes: list[str],
) -> list[WorkloadBatch]:
    names = set(deferrable) | {g.workload for g in requests if g.batch}
    live = {w: 0 for w in names}
    lines = {w: 0 for w in names}
    live_usd = {w: _ZERO for w in names}
    rate_usd = {w: _ZERO for w in names}
    batch_usd = {w: _ZERO for w in names}
    for g in requests:
        if g.batch:
            lines[g.workload] += g.requests
        elif g.workload in deferrable:
            live[g.workload] += g.requests
    unpriced, no_batch_rate = 0, set()
    for s in spend:
        if s.batch:
            batch_usd[s.workload] = batch_usd.get(s.workload, _ZERO) + s.cost_usd
            continue
        if s.workload not in live:
            continue
        live_usd[s.workload] += s.cost_usd
        at_batch, known = _batch_rate_cost(book, s)
        if not known:
            no_batch_rate.add(s.deployment)
        if at_batch is None:  # no price: count it at what it cost, no saving claimed
            unpriced += s.attempts
            at_batch = s.cost_usd
        rate_usd[s.workload] += at_batch
    if no_batch_rate:
        notes.append(
            "no batch rate known for " + ", ".join(sorted(no_batch_rate)) + ": their "
            "deferrable live tokens are counted at the live price (no saving)"
        )
    if unpriced:
        notes.append(
            f"{unpriced:,} deferrable live attempts have no known price: counted at their "
            "metered cost, with no batch saving"
        )
    out = [
        WorkloadBatch(
            workload=w,
            deferrable=w in deferrable,
            live_requests=live[w],
            live_cost_usd=live_usd[w],
            batch_rate_usd=rate_usd[w],
            batch_lines=lines[w],
            batch_cost_usd=batch_usd.get(w, _ZERO),
        )
        for w in names
    ]
    return sorted(out, key=lambda x: (-x.saving_usd, x.workload))


def _routes_using(config: GatewayConfig, provider: str) -> set[str]:
    """Routes with a target or fallback on `provider`: their work could run there."""
    out = set()
    for name, route in config.routes.items():
        for dep_id in (*route.targets, *route.fallbacks):
            dep = config.deployments.get(dep_id)
            if dep is not None and dep.provider == provider:
                out.add(name)
    return out


async def batch_report(
    store: BatchQueries,
    config: GatewayConfig,
    book: PriceBook,
    start: datetime,
    end: datetime,
    paid: Mapping[str, tuple[Decimal, Decimal]],
) -> BatchReport:
    """The batch tier over [start, end); `paid` is each dedicated provider's paid hours and
    their cost over the period (the LCPR report's dedicated lines)."""
    deferrable = list(config.lcpr.deferrable_workloads)
    requests = await store.request_groups(start, end)
    spend = await store.spend_groups(start, end, deferrable)
    busy = await store.dedicated_busy(start, end)
    notes: list[str] = []
    workloads = _workload_lines(requests, spend, deferrable, book, notes)
    flags: list[RedFlag] = []
    for line in workloads:
        flags += batch_live_flag(line)
    # Which deployments are dedicated: the config's, and any seen running on a dedicated
    # provider in the ledger (a deployment since removed from the config still counts).
    on_provider: dict[str, str] = {
        d: spec.provider
        for d, spec in config.deployments.items()
        if (p := config.providers.get(spec.provider)) is not None and p.kind == "dedicated"
    }
    on_provider.update({b.deployment: b.provider for b in busy})
    fills = []
    for provider, (hours, cost) in sorted(paid.items()):
        spec = config.providers.get(provider)
        slots = spec.max_concurrency if spec is not None and spec.max_concurrency else 1
        mine = [g for g in requests if on_provider.get(g.final_deployment or "") == provider]
        fill = dedicated_fill(
            DedicatedFillTotals(
                provider=provider,
                slots=slots,
                paid_hours=hours,
                cost_usd=cost,
                live_busy_s=sum(
                    (b.busy_seconds for b in busy if b.provider == provider and not b.batch), _ZERO
                ),
                batch_busy_s=sum(
                    (b.busy_seconds for b in busy if b.provider == provider and b.batch), _ZERO
                ),
                live_successful=sum(g.successful for g in mine if not g.batch),
                batch_successful=sum(g.successful for g in mine if g.batch),
            )
        )
        fills.append(fill)
        flags += dedicated_underused_flag(
            fill, _paid_elsewhere(config, provider, requests, spend, deferrable, on_provider)
        )
    return BatchReport(
        workloads=workloads,
        total=total(workloads),
        dedicated=fills,
        red_flags=flags,
        notes=notes,
    )


def _paid_elsewhere(
    config: GatewayConfig,
    provider: str,
    requests: Sequence[RequestGroup],
    spend: Sequence[SpendGroup],
    deferrable: Sequence[str],
    on_provider: Mapping[str, str],
) -> PaidElsewhere | None:
    """Deferrable live requests and batch lines of the routes that can use `provider`,
    answered by a deployment that is not dedicated, and what their paid attempts cost."""
    routes = _routes_using(config, provider)
    cost: dict[str, Decimal] = {}
    for s in spend:  # already only deferrable live requests and batch lines
        if s.route in routes and s.provider_kind != "dedicated" and s.cost_usd > 0:
            cost[s.route] = cost.get(s.route, _ZERO) + s.cost_usd
    if not cost:
        return None
    n = sum(
        g.requests
        for g in requests
        if g.route in cost
        and (g.batch or g.workload in deferrable)
        and g.final_deployment is not None
        and g.final_deployment not in on_provider
    )
    return PaidElsewhere(tuple(sorted(cost)), n, sum(cost.values(), _ZERO))


# --- output --------------------------------------------------------------------------------


def _s(value: Decimal | None, places: int) -> str | None:
    # Fixed-point ("0.00000000", never "0E-8"): JSON and CSV readers parse it as is.
    return None if value is None else format(round(value, places), "f")


def workload_dict(line: WorkloadBatch) -> dict[str, Any]:
    return {
        "workload": line.workload,
        "deferrable": line.deferrable,
        "live_requests": line.live_requests,
        "live_cost_usd": _s(line.live_cost_usd, 8),
        "at_batch_rate_usd": _s(line.batch_rate_usd, 8),
        "saving_usd": _s(line.saving_usd, 8),
        "batch_lines": line.batch_lines,
        "batch_cost_usd": _s(line.batch_cost_usd, 8),
        "live_share": _s(line.live_share, 4),
    }


def fill_dict(fill: DedicatedFill) -> dict[str, Any]:
    return {
        "provider": fill.provider,
        "max_concurrency": fill.slots,
        "paid_hours": _s(fill.paid_hours, 2),
        "cost_usd": _s(fill.cost_usd, 4),
        "utilization_live": _s(fill.utilization_live, 4),
        "utilization_with_batch": _s(fill.utilization_with_batch, 4),
        "successful_live": fill.live_successful,
        "successful_batch": fill.batch_successful,
        "cost_per_success_live_usd": _s(fill.cost_per_success_live, 8),
        "cost_per_success_with_batch_usd": _s(fill.cost_per_success_with_batch, 8),
    }


def report_dict(r: BatchReport) -> dict[str, Any]:
    return {
        "batch_rate": r.batch_rate,
        "workloads": [workload_dict(line) for line in r.workloads],
        "total": workload_dict(r.total),
        "dedicated_fill": [fill_dict(f) for f in r.dedicated],
        "notes": r.notes,
    }


def _rate(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _usd(value: Decimal | None, places: int = 4) -> str:
    return "n/a" if value is None else f"${value:,.{places}f}"


WORKLOAD_HEADER = (
    "workload",
    "deferrable",
    "live requests",
    "live $",
    "at batch rate $",
    "saving $",
    "batch lines",
    "batch $",
    "live share",
)
FILL_HEADER = (
    "dedicated",
    "slots",
    "paid hours",
    "paid $",
    "utilization live",
    "with batch",
    "$ / success live",
    "with batch",
    "successes live",
    "batch",
)


def workload_cells(line: WorkloadBatch) -> list[str]:
    return [
        line.workload,
        "yes" if line.deferrable else "no",
        f"{line.live_requests:,}",
        _usd(line.live_cost_usd),
        _usd(line.batch_rate_usd),
        _usd(line.saving_usd),
        f"{line.batch_lines:,}",
        _usd(line.batch_cost_usd),
        _rate(line.live_share),
    ]


def fill_cells(fill: DedicatedFill) -> list[str]:
    return [
        fill.provider,
        str(fill.slots),
        f"{fill.paid_hours:,.1f}",
        _usd(fill.cost_usd, 2),
        _rate(fill.utilization_live),
        _rate(fill.utilization_with_batch),
        _usd(fill.cost_per_success_live, 6),
        _usd(fill.cost_per_success_with_batch, 6),
        f"{fill.live_successful:,}",
        f"{fill.batch_successful:,}",
    ]
