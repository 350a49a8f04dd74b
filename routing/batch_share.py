"""The batch tier in LCPR: the batch-eligible share and dedicated utilization before and
after batch fill (pure Decimal arithmetic over ledger aggregates; the caller queries them).

- **Batch-eligible share**: requests of a workload marked deferrable (`lcpr:
  deferrable_workloads`) that ran live instead of as batch lines, what they cost, and what
  the same tokens would have cost at the batch rate. The share is live / (live + batch
  lines) of that workload.
- **Dedicated fill**: a dedicated GPU is paid by the hour whether busy or not, so batch lines
  that fill its idle slots cost nothing at the margin. Utilization is busy slot-seconds
  (attempt latencies) / (`max_concurrency` × paid seconds), live attempts alone and with the
  batch attempts; the effective cost per successful request is the paid cost over the
  successful requests it answered, live alone and with the batch lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from routing.red_flags import UTILIZATION_FLOOR, RedFlag, utilization

# A deferrable workload may run this share of its requests live before it is flagged:
# some of it is interactive debugging or a retry by hand, most of it should wait.
BATCH_LIVE_SHARE_LIMIT = Decimal("0.20")
_ZERO = Decimal(0)
_HUNDRED = Decimal(100)


def _pct(value: Decimal) -> str:
    return f"{value * _HUNDRED:.1f} %"


def _usd(value: Decimal) -> str:
    return f"${value:,.4f}"


@dataclass(frozen=True, slots=True)
class WorkloadBatch:
    """One workload's month on the batch tier.

    `live_*` are its deferrable requests that ran live (none when the workload is not
    deferrable): their count, the cost of every attempt they made, and those attempts'
    tokens priced at the batch rate. `batch_*` are its batch lines (requests with a batch
    id) and what their attempts cost.
    """

    workload: str
    deferrable: bool
    live_requests: int
    live_cost_usd: Decimal
    batch_rate_usd: Decimal
    batch_lines: int
    batch_cost_usd: Decimal

    @property
    def live_share(self) -> Decimal | None:
        """Live share of the workload's deferrable requests (None: nothing deferrable ran)."""
        n = self.live_requests + self.batch_lines
        return Decimal(self.live_requests) / Decimal(n) if n and self.deferrable else None

    @property
    def saving_usd(self) -> Decimal:
        """What running the live ones at the batch rate would have saved (never negative)."""
        return max(self.live_cost_usd - self.batch_rate_usd, _ZERO)


def total(lines: Iterable[WorkloadBatch]) -> WorkloadBatch:
    """Sum of the lines, as one line named `(all)` (deferrable when any line is)."""
    items = list(lines)
    return WorkloadBatch(
        workload="(all)",
        deferrable=any(x.deferrable for x in items),
        live_requests=sum(x.live_requests for x in items),
        live_cost_usd=sum((x.live_cost_usd for x in items), _ZERO),
        batch_rate_usd=sum((x.batch_rate_usd for x in items), _ZERO),
        batch_lines=sum(x.batch_lines for x in items),
        batch_cost_usd=sum((x.batch_cost_usd for x in items), _ZERO),
    )


def batch_live_flag(line: WorkloadBatch) -> list[RedFlag]:
    """`batch_eligible_live_high`: a deferrable workload ran more than 20 % of its requests
    live and the batch rate would have saved money on them."""
    share = line.live_share
    if share is None or share <= BATCH_LIVE_SHARE_LIMIT or line.saving_usd <= 0:
        return []
    n = line.live_requests + line.batch_lines
    return [
        RedFlag(
            "batch_eligible_live_high",
            line.workload,
            f"deferrable workload ran {_pct(share)} live ({line.live_requests:,} of {n:,} "
            f"requests; limit {_pct(BATCH_LIVE_SHARE_LIMIT)}): {_usd(line.live_cost_usd)} "
            f"live would have cost {_usd(line.batch_rate_usd)} at the batch rate, "
            f"{_usd(line.saving_usd)} to save through /v1/batches",
        )
    ]


@dataclass(frozen=True, slots=True)
class DedicatedFillTotals:
    """One dedicated provider over the report's period: what it was paid and did."""

    provider: str
    slots: int  # max_concurrency
    paid_hours: Decimal
    cost_usd: Decimal  # paid hours × hourly rate
    live_busy_s: Decimal  # latencies of its live attempts (every role but `batch`)
    batch_busy_s: Decimal  # latencies of its `batch` attempts
    live_successful: int  # successful live requests it answered
    batch_successful: int  # successful batch lines it answered


@dataclass(frozen=True, slots=True)
class DedicatedFill:
    provider: str
    slots: int
    paid_hours: Decimal
    cost_usd: Decimal
    live_successful: int
    batch_successful: int
    utilization_live: Decimal | None
    utilization_with_batch: Decimal | None
    cost_per_success_live: Decimal | None  # paid cost / live successes
    cost_per_success_with_batch: Decimal | None  # paid cost / (live + batch successes)


def dedicated_fill(t: DedicatedFillTotals) -> DedicatedFill:
    live, both = t.live_successful, t.live_successful + t.batch_successful
    return DedicatedFill(
        provider=t.provider,
        slots=t.slots,
        paid_hours=t.paid_hours,
        cost_usd=t.cost_usd,
        live_successful=t.live_successful,
        batch_successful=t.batch_successful,
        utilization_live=utilization(t.live_busy_s, t.paid_hours, t.slots),
        utilization_with_batch=utilization(t.live_busy_s + t.batch_busy_s, t.paid_hours, t.slots),
        cost_per_success_live=t.cost_usd / live if live else None,
        cost_per_success_with_batch=t.cost_usd / both if both else None,
    )


@dataclass(frozen=True, slots=True)
class PaidElsewhere:
    """Deferrable work (deferrable live requests and batch lines) of the routes that can
    use a dedicated provider, answered by paid (serverless or closed API) deployments."""

    routes: tuple[str, ...]
    requests: int
    cost_usd: Decimal


def dedicated_underused_flag(
    fill: DedicatedFill, elsewhere: PaidElsewhere | None = None
) -> list[RedFlag]:
    """`dedicated_underused`: utilization with batch fill under 40 % for the period. When
    deferrable work of routes that can use the GPU ran on paid deployments meanwhile, the
    flag names it and its cost: that work could have filled the idle slots at $0 marginal."""
    used = fill.utilization_with_batch
    if used is None or used >= UTILIZATION_FLOOR:
        return []
    message = (
        f"dedicated utilization {_pct(used)} for the period with batch fill (live alone "
        f"{_pct(fill.utilization_live or _ZERO)}; < {_pct(UTILIZATION_FLOOR)}): paid GPU "
        "hours mostly idle"
    )
    if elsewhere is not None and elsewhere.cost_usd > 0:
        message += (
            f", while {elsewhere.requests:,} deferrable requests of "
            f"{', '.join(elsewhere.routes)} ran on paid deployments for "
            f"{_usd(elsewhere.cost_usd)}: as batch lines they could fill its idle slots at "
            "$0 marginal token cost"
        )
    return [RedFlag("dedicated_underused", fill.provider, message)]
