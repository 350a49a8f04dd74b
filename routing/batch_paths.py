"""Which of the three ways a batch runs, decided from its route's plan (pure).

A batch's lines are deferrable: nobody waits on them, so they go where they cost least.
- `dedicated_fill`: a dedicated GPU in the plan is paid by the hour whether it is busy or
  not, so lines run on its idle slots at no marginal token cost (gateway/batch/fill.py
  only takes a slot live traffic leaves free);
- `provider_batch`: otherwise a deployment whose provider has a Batch API runs them at the
  provider's batch price (typically half the live one);
- `serverless`: otherwise the plan's cheapest serverless (or closed-API) deployment, at a
  low concurrency so the batch never crowds the route's live traffic.
In every path the other targets of the plan stay behind the chosen one as per-line
fallbacks, and every attempt carries the role `batch`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal

from routing.model import DeploymentSpec, Plan, PlannedAttempt

DEDICATED_FILL = "dedicated_fill"
PROVIDER_BATCH = "provider_batch"
SERVERLESS = "serverless"
PATHS = (DEDICATED_FILL, PROVIDER_BATCH, SERVERLESS)
BATCH_ROLE = "batch"


@dataclass(frozen=True, slots=True)
class BatchPath:
    path: str
    # The deployment the path runs on; the plan's other targets follow it as fallbacks.
    deployment: DeploymentSpec
    plan: Plan


def choose_path(
    plan: Plan,
    *,
    has_batch_api: Callable[[DeploymentSpec], bool],
    unit_cost: Callable[[DeploymentSpec], Decimal | None],
    forced: str | None = None,
) -> BatchPath:
    """The path for a batch planned on `plan`. `unit_cost`: a comparable live price per
    deployment (None: unknown, tried last); `forced`: a path the batch asked for (metadata
    `farebox_path`), honoured when the plan has a deployment for it, else ignored."""
    targets = _unique(plan.attempts)
    if not targets:
        raise ValueError(f"route {plan.route!r} has no targets")
    dedicated = [d for d in targets if d.provider_kind == "dedicated"]
    with_api = [d for d in targets if has_batch_api(d)]
    paid = [d for d in targets if d.provider_kind != "dedicated"]
    order = [DEDICATED_FILL, PROVIDER_BATCH, SERVERLESS]
    if forced in PATHS:
        order.remove(forced)
        order.insert(0, forced)
    for path in order:
        if path == DEDICATED_FILL and dedicated:
            chosen = dedicated[0]
        elif path == PROVIDER_BATCH and with_api:
            chosen = with_api[0]
        elif path == SERVERLESS and paid:
            chosen = min(paid, key=lambda d: _cost_key(unit_cost(d), targets.index(d)))
        else:
            continue
        return BatchPath(path, chosen, batch_plan(plan, chosen))
    # Only dedicated deployments and none chosen above cannot happen; keep mypy honest.
    return BatchPath(SERVERLESS, targets[0], batch_plan(plan, targets[0]))


def batch_plan(plan: Plan, first: DeploymentSpec) -> Plan:
    """`plan` with `first` in front, the rest after it in plan order, all in role `batch`;
    no hedging (a batch line is never in a hurry) and no fan-out."""
    rest = [d for d in _unique(plan.attempts) if d.id != first.id]
    attempts = tuple(PlannedAttempt(d, BATCH_ROLE) for d in (first, *rest))
    return replace(plan, attempts=attempts, hedge_after_ms=None, fanout=None)


def _unique(attempts: tuple[PlannedAttempt, ...]) -> list[DeploymentSpec]:
    seen: dict[str, DeploymentSpec] = {}
    for attempt in attempts:
        seen.setdefault(attempt.deployment.id, attempt.deployment)
    return list(seen.values())


def _cost_key(cost: Decimal | None, position: int) -> tuple[int, Decimal, int]:
    return (1, Decimal(0), position) if cost is None else (0, cost, position)
