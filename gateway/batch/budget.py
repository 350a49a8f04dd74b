"""A key's budget and a batch: the batch's worst case is held against the budget from the
moment it is submitted, and released line by line as its lines are metered.

What a key has committed this month is its metered spend (the ledger, batch lines included
as each one is saved) plus what its unfinished batches may still cost: each batch's
worst case scaled by its share of lines not yet finished. A batch whose worst case does not
fit in what is left is refused at submission with the 429 the OpenAI SDKs raise as
`RateLimitError` (`insufficient_quota`), before a single line runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from gateway.errors import QuotaExceeded
from gateway.keys.auth import Principal
from gateway.ledger.batches_repository import BatchesRepository
from gateway.ledger.repository import LedgerRepository


async def held_by_batches(repository: BatchesRepository, key_id: str) -> Decimal:
    """What the key's unfinished batches may still cost (their worst case, pro rata)."""
    total = Decimal(0)
    for row in await repository.active_for_key(key_id):
        worst = row["reserved_usd"]
        if worst is None or not row["total"]:
            continue
        left = row["total"] - row["completed"] - row["failed"]
        total += Decimal(worst) * max(left, 0) / row["total"]
    return total


async def check_budget(
    ledger: LedgerRepository,
    batches: BatchesRepository,
    principal: Principal | None,
    worst: Decimal | None,
    now: datetime | None = None,
) -> None:
    """Refuse a batch whose worst case does not fit in the key's budget for the month."""
    if principal is None or principal.budget_usd is None or not worst:
        return
    now = now or datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    spent = await ledger.key_spend_since(principal.key_name, month)
    held = await held_by_batches(batches, principal.key_name)
    left = principal.budget_usd - spent - held
    if worst > left:
        raise QuotaExceeded(
            f"The batch may cost up to ${worst:.6f} (its lines' inputs and max tokens at the "
            f"live price), more than the ${max(left, Decimal(0)):.6f} left of this key's monthly "
            f"budget of ${principal.budget_usd} (spent ${spent:.6f}, held by unfinished "
            f"batches ${held:.6f})."
        )
